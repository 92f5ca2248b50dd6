"""`picli` with accelerate's FSDP path taken on CPU processes, for tests/test_finetune.py.

accelerate 1.16 enables FSDP only for accelerator devices: in `AcceleratorState.__init__`
(accelerate/state.py) the branch that sets `DistributedType.FSDP` is reached for MULTI_GPU,
MULTI_XPU, MULTI_NPU and the like, never for MULTI_CPU, so `accelerate launch --config_file
examples/fsdp.yaml` on CPUs silently trains with plain data parallelism. torch 2.13's FSDP2
(`fully_shard`) itself runs on CPU over gloo. This launcher sets the distributed type to FSDP
after accelerate's own initialisation, where accelerate would have set it on a GPU, so that
picli's FSDP code (sharded prepare, gathered checkpoints and export, resume) runs for real:

    accelerate launch --config_file examples/fsdp.yaml --num_processes 2 tests/fsdp_on_cpu.py \\
        finetune MODEL --data DATA --cpu ...
"""

import sys

import accelerate.state as state
from accelerate.utils import DistributedType

_initialise = state.AcceleratorState.__init__


def _initialise_with_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _initialise(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # What accelerate's GPU branch does (state.py), including the copy PartialState reads back.
        self.distributed_type = DistributedType.FSDP
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin


state.AcceleratorState.__init__ = _initialise_with_fsdp

if __name__ == "__main__":
    from picli.cli import app

    sys.exit(app())
