"""Models from other runtimes: :mod:`perceptsr.interop.ncnn` imports ncnn ``.param``/``.bin`` pairs
(Real-ESRGAN's RRDBNet and SRVGGNetCompact) into BasicSR-named perceptsr checkpoints."""
