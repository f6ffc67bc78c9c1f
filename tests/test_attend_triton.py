"""The Triton kernels of the Local Attender, checked on CPU in Triton's interpreter.

``TRITON_INTERPRET=1`` only works if it is set before ``triton`` is first imported (it decides how
``triton.language`` itself is built), and other tests import it (``torch.compile``). So in a normal run
this module runs itself once in a fresh interpreter with the variable set; there, the kernel tests
are collected and run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uplift import NEIGHBOURHOODS, local_attend, local_attend_reference

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
pytest.importorskip("triton", reason="Triton is not installed (CUDA builds of PyTorch bring it)")


def _random_weights(b: int, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, h, w, generator=g).softmax(dim=1)


if not INTERPRETED:

    def test_triton_kernels_in_the_interpreter() -> None:
        """Run this module's kernel tests in a fresh process with TRITON_INTERPRET=1."""
        repo = Path(__file__).resolve().parents[1]
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).relative_to(repo))],
            cwd=repo, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]

else:

    @pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
    def test_forward_matches_reference(n: int) -> None:
        value = torch.randn(2, 5, 3, 4)
        weights = _random_weights(2, n, 6, 8, seed=n)
        out = local_attend(weights, value, NEIGHBOURHOODS[n], impl="triton")
        torch.testing.assert_close(out, local_attend_reference(weights, value, NEIGHBOURHOODS[n]), rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
    def test_half_precision_accumulates_in_float32(dtype: torch.dtype, tol: float) -> None:
        value = torch.randn(1, 70, 3, 3)  # more channels than one block of the kernel
        weights = _random_weights(1, 17, 9, 9)  # scale 3
        expected = local_attend_reference(weights.double(), value.double(), NEIGHBOURHOODS[17])
        out = local_attend(weights.to(dtype), value.to(dtype), NEIGHBOURHOODS[17], impl="triton")
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)

    def test_channels_last_and_backward_match_reference() -> None:
        offsets = NEIGHBOURHOODS[9]
        value = torch.randn(2, 4, 3, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
        weights = _random_weights(2, 9, 6, 10).requires_grad_()
        grad = torch.randn(2, 4, 6, 10)
        out = local_attend(weights, value, offsets, impl="triton")
        expected = local_attend_reference(weights, value, offsets)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        got = torch.autograd.grad(out, (weights, value), grad)
        for g, e in zip(got, torch.autograd.grad(expected, (weights, value), grad)):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize(("n", "scale"), [(5, 2), (25, 2), (17, 3)])
    def test_gradcheck(n: int, scale: int) -> None:
        weights = _random_weights(1, n, 2 * scale, 3 * scale).double().requires_grad_()
        value = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda w, v: local_attend(w, v, NEIGHBOURHOODS[n], impl="triton"),
                                        (weights, value), fast_mode=True)

    def test_the_model_runs_with_the_triton_attender() -> None:
        from tests.helpers import tiny_config
        from uplift import UPLiFT

        model = UPLiFT(tiny_config(16)).eval()
        image, feats = torch.randn(1, 3, 32, 48), torch.randn(1, 8, 2, 3)
        with torch.no_grad():
            expected = model(image, feats, steps=2)
            model.attender.impl = "triton"
            torch.testing.assert_close(model(image, feats, steps=2), expected, rtol=1e-5, atol=1e-6)
