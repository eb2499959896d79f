"""The whole toolchain in one call: train, export, verify, generate, profile.

Every artefact goes into one output folder:

    checkpoint.pt, train.json     training (neurodeploy train)
    model.net, export.json        the exported decoder (neurodeploy export)
    verify.json                   Lava (loihi2-sim) against the Reference
    generated.txt                 the prompt and the text generated on Lava
    profile.json, profile.csv     counts and energy (neurodeploy profile)
    plots/*.png                   firing rates and energy plots

The generate and profile stages share one Lava run that records every
layer, so the text and the counts come from the same spikes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .energy import energy_model_names, load_energy_model
from .errors import NeurodeployError

log = logging.getLogger(__name__)
PIPELINE_TARGET = "loihi2-sim"
STAGES = ("train", "export", "verify", "generate", "profile")


def run_pipeline(spec, corpus: str | None, out_dir: str | Path, prompt: str,
                 count: int, device: str = "cpu", stage=None) -> dict:
    """Run every stage; return a summary with ``passed`` from verify.

    ``stage(name, message)`` is called when a stage starts. A failed
    verification still runs generate and profile, so the folder contains
    every artefact for the diagnosis.
    """
    from .export import export_checkpoint
    from .netx_read import load_network
    from .profile_report import (build_report, profile_decoder, write_csv,
                                 write_plots)
    from .runtime.generate import Sampler, prompt_tokens
    from .runtime.targets import load_target
    from .runtime.verify import verify
    from .train import train

    if count <= 0:
        raise NeurodeployError(f"invalid token count {count}; it must be "
                               "positive")
    if spec.model.arch != "snn":
        raise NeurodeployError(
            "the pipeline deploys a spiking decoder; use a spec with "
            "arch=snn")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notify = stage or (lambda *_: None)

    notify("train", f"training {spec.name!r} for {spec.train.steps} steps")
    summary = train(spec, corpus, out, device=device, progress=False)
    _write_json(out / "train.json", summary)

    notify("export", f"exporting {out / 'model.net'}")
    export = export_checkpoint(out / "checkpoint.pt", out / "model.net")
    _write_json(out / "export.json", export)
    network = load_network(out / "model.net")
    tokens = prompt_tokens(network, prompt)

    notify("verify", f"verifying on {PIPELINE_TARGET} against the "
           f"Reference for {count} tokens")
    verification = verify(network, tokens, count)
    _write_json(out / "verify.json", verification)

    notify("generate", f"generating {count} tokens on {PIPELINE_TARGET}")
    models = [load_energy_model(name) for name in energy_model_names()]
    run = profile_decoder(network, tokens, count,
                          load_target(PIPELINE_TARGET), Sampler())
    text = network.tokenizer.decode(run["generation"].tokens)
    (out / "generated.txt").write_text(prompt + text, encoding="utf-8")

    notify("profile", "counting spikes and operations; writing "
           "profile.json, profile.csv and plots/")
    report = build_report(run["lava"], models, network)
    report.update({"file": str(out / "model.net"),
                   "target": PIPELINE_TARGET,
                   "counts_match_reference": not run["differences"],
                   "count_differences": run["differences"]})
    _write_json(out / "profile.json", report)
    write_csv(run["lava"], out / "profile.csv")
    plots = write_plots(report, out / "plots")

    return {
        "out": str(out),
        "passed": bool(verification["passed"]) and not run["differences"],
        "val_loss": summary["val_loss"],
        "verify_passed": verification["passed"],
        "agreement": verification["agreement"],
        "counts_match_reference": not run["differences"],
        "text": text,
        "energy": {name: {key: energy[key] for key in (
            "snn_pj_per_token", "ann_pj_per_token", "reduction_percent")}
            for name, energy in report["energy"].items()},
        "artefacts": sorted(str(path) for path in out.rglob("*")
                            if path.is_file()),
        "plots": plots,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n",
                    encoding="utf-8")
