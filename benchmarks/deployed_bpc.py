"""Validation BPC of a trained spiking decoder before and after export.

    python benchmarks/deployed_bpc.py runs/bench-snn/checkpoint.pt

"Deployed" runs the folded integer weights that `neurodeploy export`
writes, which the PyTorch reference and Lava compute exactly.
"""

import json
import sys

from neurodeploy import data
from neurodeploy.export import deploy, load_trained
from neurodeploy.train import evaluate


def main() -> None:
    payload, model = load_trained(sys.argv[1])
    spec = payload["spec"]
    text, raw = data.read_corpus(None, spec.model.tokenizer)
    corpus = data.split_corpus(text, raw, payload["tokenizer"],
                               spec.model.context,
                               spec.train.validation_fraction)
    trained = evaluate(model, corpus, spec, "cpu")
    deploy(model)
    deployed = evaluate(model, corpus, spec, "cpu")
    print(json.dumps({"trained_bpc": trained.val_bpc,
                      "deployed_bpc": deployed.val_bpc,
                      "deployed_accuracy": deployed.val_accuracy}))


if __name__ == "__main__":
    main()
