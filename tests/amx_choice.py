"""The CPU fast path's measured choice, rigged for the AMX kernels' tests (test_cpu_conv1x1_amx,
test_cpu_winograd_amx): the AMX candidates offered as on an AMX CPU but run on the tiles'
software model, and timed as fastest."""

from __future__ import annotations

from resnet_fused.cpu import conv1x1, onednn


def rig_amx_fastest(monkeypatch, cache_dir, ops: tuple[str, ...]) -> list[str]:
    """Measured choices (a fresh cache in ``cache_dir``) with ``conv1x1.amx_status`` available
    and ``AMX_KERNEL`` the model; every timed call that ran the AMX kernel counts 1 us, any
    other 1 s. ``ops``: the names of :mod:`.onednn`'s recorded ops that take the kernel as their
    last argument. Returns the list of the kernels those ops are called with (the timer clears
    it before each timed call). The caller clears ``resnet_fused.tuning`` around the test."""
    monkeypatch.setenv("RESNET_FUSED_CPU_CHOICE", "measure")
    monkeypatch.setenv("RESNET_FUSED_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(conv1x1, "amx_status", lambda: "available")
    monkeypatch.setattr(conv1x1, "AMX_KERNEL", "amx_model")
    kernels: list[str] = []

    def recording(op):
        def call(*args):
            kernels.append(args[-1])
            return op(*args)
        return call

    for name in ops:
        monkeypatch.setattr(onednn, name, recording(getattr(onednn, name)))

    def timer(fn, *args, **kwargs):
        kernels.clear()
        fn()
        return 1e-6 if kernels == ["amx_model"] else 1.0

    monkeypatch.setattr(onednn.algorithms, "cpu_timer", timer)
    return kernels
