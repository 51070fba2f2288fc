"""Hub-ready model folders: a model card from the result files, a loadability check, and an upload.

    python -m asit.hub card results/pretrain/cpu/encoder            # write its README.md
    python -m asit.hub push results/pretrain/cpu/encoder owner/asit-tiny-cpu   # needs a token

A folder written by :func:`asit.models.save_encoder` (or a classifier folder of :mod:`asit.finetune`)
is already what timm reads from a hub or a local directory: ``config.json`` with timm's
``architecture``, ``num_classes``, ``model_args`` and ``pretrained_cfg``, and ``model.safetensors``.
After ``import asit`` (which registers the ``asit_vit_*`` architectures with timm)::

    timm.create_model("local-dir:results/pretrain/cpu/encoder", pretrained=True, num_classes=0)
    timm.create_model("hf-hub:owner/asit-tiny-cpu", pretrained=True, num_classes=0)  # once uploaded

The model card (``README.md``, the hub's front page of a model) is generated, never typed: what
the encoder was pretrained on, its preset, shape and input, the pretraining summary and the
downstream results of that preset read from ``results/``, and the citation.

:func:`push` uses ``huggingface_hub`` (it comes with timm). It checks the folder first by loading
it through timm exactly as a user would, so a folder that would not load is never uploaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import timm

from asit import models
from asit.audio import DEFAULT_SAMPLE_RATE, NormStats
from asit.results import collect_results, comparison_table

CITATION = """@article{atito2022asit,
  title   = {ASiT: Local-Global Audio Spectrogram vIsion Transformer for Event Classification},
  author  = {Atito, Sara and Awais, Muhammad and Wang, Wenwu and Plumbley, Mark D. and Kittler, Josef},
  journal = {arXiv preprint arXiv:2211.13189},
  year    = {2022}
}"""

CARD_NAME = "README.md"


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a model folder; a clear error when the folder is not one."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {directory} is not a model folder written by asit")
    return json.loads(config_file.read_text())


def upgrade_folder(directory: str | Path) -> bool:
    """Rewrite an encoder folder saved before the timm layout (no ``pretrained_cfg``) in place.

    Returns ``True`` if it was rewritten. Weights are unchanged; every extra field is kept.
    """
    config = read_config(directory)
    if "pretrained_cfg" in config:
        return False
    if "format" in config:  # a classifier: its own writer gives it the timm fields
        raise ValueError(f"{directory} is a classifier saved before the timm layout; save it again with asit.finetune")
    encoder = models.load_encoder(directory, num_classes=config.get("num_classes", 0))
    stats = config.get("norm_stats")
    known = {"architecture", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "num_classes",
             "global_pool", "fbank", "norm_stats", "asit_version"}
    models.save_encoder(
        encoder,
        directory,
        extra={k: v for k, v in config.items() if k not in known},
        stats=None if stats is None else NormStats(stats["mean"], stats["std"]),
        sample_rate=(config.get("fbank") or {}).get("sample_rate", DEFAULT_SAMPLE_RATE),
    )
    return True


def check_loads(directory: str | Path):
    """Load the folder with ``timm.create_model("local-dir:...")`` as a user would; return the model."""
    config = read_config(directory)
    if "pretrained_cfg" not in config:
        raise ValueError(f"{directory}/config.json has no 'pretrained_cfg': timm cannot load it (python -m asit.hub card upgrades it)")
    return timm.create_model(f"local-dir:{Path(directory).resolve()}", pretrained=True, num_classes=config.get("num_classes", 0))


def _preset_results(results_dir: Path, preset: str) -> list[dict[str, Any]]:
    table = collect_results(results_dir)
    if table.empty:
        return []
    table = comparison_table(table[table["preset"] == preset])
    return table.to_dict("records")


def _fmt(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.1f}"  # NaN != NaN


def _results_section(results_dir: Path | None, preset: str | None) -> list[str]:
    if results_dir is None or preset is None:
        return ["No result files were given for this model."]
    lines = []
    summary_file = results_dir / "pretrain" / preset / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        lines += [
            f"Pretraining (`{preset}` preset): {summary.get('epochs')} epochs, {summary.get('steps')} steps, "
            f"{summary.get('train_time_s')} s on {summary.get('device')}; final loss {_fmt(summary.get('final_loss'))}. "
            f"k-NN accuracy on {summary.get('knn_dataset')}: {_fmt(summary.get('knn_accuracy'))} % "
            f"(random init: {_fmt(summary.get('knn_accuracy_random_init'))} %).",
            "",
        ]
    rows = _preset_results(results_dir, preset)
    if rows:
        lines += ["| task | data | metric | fine-tuned | random init | paper ASiT (ViT-B) | note |", "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {r['task']} | {r['dataset']} | {r['metric']} | {_fmt(r['ours'])} | {_fmt(r['random_init'])} | {_fmt(r['paper_asit'])} | {r['note']} |"
            for r in rows
        ]
    return lines or [f"No result files of the `{preset}` preset under `{results_dir}`."]


def model_card(directory: str | Path, results_dir: str | Path | None = None) -> str:
    """The model card (Markdown with the hub's YAML header) of a model folder, from its config and ``results_dir``."""
    config = read_config(directory)
    preset = config.get("preset") or (config.get("task_config") or {}).get("preset")
    fbank = config.get("fbank") or {}
    stats = config.get("norm_stats") or config.get("stats")
    classes = config.get("label_names") or config.get("classes")
    kind = "An audio classifier" if classes else "An audio encoder (no classifier)"
    title = f"ASiT {config['architecture']} ({preset or 'unknown'} preset)"
    lines = [
        "---",
        "library_name: timm",
        "license: mit",
        "tags: [audio, audio-classification, self-supervised, asit, timm]",
        "---",
        f"# {title}",
        "",
        f"{kind} pretrained with ASiT (group masked model learning + local and global self-distillation) "
        "by the asit tutorial repository. A ViT on 1-channel Kaldi log-mel spectrograms, weights in timm's layout.",
        "",
        "## Model",
        f"- architecture: `{config['architecture']}`, width {config.get('embed_dim')}, {config.get('depth')} blocks, "
        f"{config.get('num_heads')} heads, input {config.get('img_size')} (frames x mel bins)",
        f"- front end: {fbank.get('sample_rate', config.get('sample_rate'))} Hz, {fbank.get('num_mel_bins', config.get('num_mel_bins'))} mel bins, "
        f"{fbank.get('frame_length_ms', 25.0)} ms window, {fbank.get('frame_shift_ms', 10.0)} ms hop (Kaldi fbank, as AST)",
        f"- normalisation: (fbank - mean) / (2 * std) with {stats}",
        f"- preset: `{preset}`" + (f", epoch {config['epoch']}" if "epoch" in config else ""),
        f"- pretraining data: {config.get('pretrain_dataset', 'the built-in synthetic data set' if preset in ('smoke', 'cpu') else 'see the preset')}",
    ]
    if classes:
        lines.append(f"- classes: {len(classes)} ({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})")
    lines += [
        "",
        "## Use",
        "```python",
        "import timm, asit  # importing asit registers the asit_vit_* architectures",
        f'model = timm.create_model("local-dir:THIS_FOLDER", pretrained=True, num_classes={config.get("num_classes", 0)})',
        '# or, from the hub: timm.create_model("hf-hub:OWNER/NAME", pretrained=True, ...)',
        "```",
        "Inputs are normalised spectrograms `(B, 1, frames, 128)`; `asit.features.FbankFrontend` makes them from waveforms.",
        "",
        "## Results",
        *_results_section(Path(results_dir) if results_dir else None, preset),
        "",
        "Numbers from the built-in data or a small preset are not comparable with the paper's.",
        "",
        "## Citation",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: str | Path, results_dir: str | Path | None = None) -> Path:
    """Write ``README.md`` into the folder (upgrading an old encoder folder first); returns its path."""
    upgrade_folder(directory)
    path = Path(directory) / CARD_NAME
    path.write_text(model_card(directory, results_dir))
    return path


def push(directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False, api=None) -> str:
    """Upload a model folder to the hub repository ``repo_id`` (created if missing); returns the commit URL.

    The folder must load through timm (:func:`check_loads`) and carry its model card. ``api`` is a
    ``huggingface_hub.HfApi`` (default: a new one with ``token``).
    """
    directory = Path(directory)
    check_loads(directory)
    if not (directory / CARD_NAME).is_file():
        raise FileNotFoundError(f"{directory / CARD_NAME} is missing: write the model card first (python -m asit.hub card {directory})")
    if api is None:
        from huggingface_hub import HfApi  # optional (the `export` extra): only uploads need it

        api = HfApi(token=token, library_name="asit")
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message="Upload ASiT model"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asit.hub", description="Model cards and uploads of asit model folders.")
    commands = parser.add_subparsers(dest="command", required=True)
    card = commands.add_parser("card", help="write README.md (the model card) into a model folder")
    card.add_argument("directory")
    card.add_argument("--results", default="results", help="the results folder the card's numbers come from")
    upload = commands.add_parser("push", help="upload a model folder to the hub (HF_TOKEN or --token)")
    upload.add_argument("directory")
    upload.add_argument("repo_id", help="owner/name")
    upload.add_argument("--token")
    upload.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "card":
        print(write_model_card(args.directory, args.results))
    else:
        print(push(args.directory, args.repo_id, token=args.token, private=args.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
