"""Make coroseg's built-in starts (src/coroseg/training/pretrained/): `arcade-v1`, and `arcade-v2` from a model.

The default recipe (TrainConfig's defaults, random start) trained for 60 epochs on the 200 real ARCADE frames
of ../shared/data/arcade_syntax_val200, exactly as bench/quality_sweep.py's `pretrain_real` lever pretrains
(quality_cv.pretrain, seed 0), saved as safetensors whose header records the network, the recipe, the data's
citation and the identity of every frame of the folder (coroseg warns a training on any of them):

    PYTHONPATH=src .venv/bin/python bench/pretrained_weights.py --out /tmp/arcade_v1.safetensors

About 8 min on a 2-core CPU. `--from-state FILE` packages weights the sweep already trained (its
`pretrained_<recipe>.pt`, a state dict of tensors loaded weights-only) instead of training again.

`arcade-v2` is arcade-v1 trained on by `coroseg train --data ../shared/data/arcade_syntax_val200 --device cpu`
(the default recipe, seed 0: one split of 160 training and 40 validation frames, 160 epochs), packaged from
that run's model (about 18 min on a 2-core CPU, then):

    PYTHONPATH=src .venv/bin/python bench/pretrained_weights.py --name arcade-v2 --from-model \
        coroseg_runs/<run>/pytorch_model --out /tmp/arcade_v2.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from quality_cv import pretrain  # noqa: E402 - the bench's own pretraining, shared with the sweep

from coroseg.config import TrainConfig  # noqa: E402
from coroseg.data.pairs import checked_scan  # noqa: E402
from coroseg.model_spec import ModelSpec  # noqa: E402
from coroseg.training.initial_weights import METADATA_KEY, frame_ids  # noqa: E402

EPOCHS = 60
CITATION = ("ARCADE (Zenodo record 10390295; see it for the licence terms): M. Popov et al., Scientific Data 11, "
            "20 (2024), doi:10.1038/s41597-023-02871-z; phase 1 syntax/val, 200 frames, mask = union of the 25 "
            "SYNTAX segments")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/arcade_syntax_val200"))
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (never replaced)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--from-state", type=Path, help="package these trained weights instead of training")
    parser.add_argument("--name", choices=("arcade-v1", "arcade-v2"), default="arcade-v1")
    parser.add_argument("--from-model", help="arcade-v2: the model (folder or URI) of its coroseg train run")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out}: already exists; choose a new --out")
    if (args.name == "arcade-v2") != bool(args.from_model):
        sys.exit("--from-model goes with --name arcade-v2, and arcade-v2 is packaged from its run's model")
    config = replace(TrainConfig(), init=None, device="cpu", patience=25)   # arcade-v1's (the default of its time)
    t0 = time.perf_counter()
    pairs = checked_scan(args.data).pairs
    if args.from_model:
        state, summary, recipe = _from_model(args.from_model, args.data, len(pairs))
    else:
        state = (torch.load(args.from_state, map_location="cpu", weights_only=True) if args.from_state
                 else pretrain(config, torch.device("cpu"), 0, args.epochs, str(args.data)))
        summary = f"the default network trained {args.epochs} epochs on {len(pairs)} real ARCADE frames"
        recipe = (f"coroseg train --data {args.data.name} --init none --epochs {args.epochs} (seed 0, "
                  f"val fraction {config.val_fraction}: {len(pairs)} frames)")
    metadata = {
        "spec": ModelSpec.of_training(replace(config, data=str(args.data))).to_metadata(),
        "summary": summary,
        "recipe": recipe,
        "data": CITATION,
        "frames": sorted(frame_ids(pair.image for pair in pairs)),
    }
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(tensors, str(args.out), metadata={METADATA_KEY: json.dumps(metadata)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {len(pairs)} frame ids) in "
          f"{time.perf_counter() - t0:.0f} s")


def _from_model(uri: str, data: Path, count: int) -> tuple[dict, str, str]:
    """arcade-v2's weights, read from its run's model (which must be the default network trained on `data`
    from arcade-v1), and what its header says of them."""
    from coroseg.inference.model_loading import load_model

    loaded = load_model(uri, torch.device("cpu"), None)
    if loaded.spec.members != 1 or loaded.spec.architecture != ModelSpec.of_training(TrainConfig()).architecture:
        sys.exit(f"{uri}: not one default network (members {loaded.spec.members}, {loaded.spec.architecture})")
    state = {k: v.detach().clone() for k, v in loaded.module.state_dict().items()}
    summary = (f"arcade-v1 trained 160 more epochs (the default recipe) on {count} real ARCADE frames (160 "
               "training, 40 validation)")
    recipe = (f"coroseg train --data {data.name} (seed 0: --init auto = arcade-v1, 160 epochs, patience 50, one "
              f"split of 160 training and 40 validation frames of {count})")
    return state, summary, recipe


if __name__ == "__main__":
    main()
