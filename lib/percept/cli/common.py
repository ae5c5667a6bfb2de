"""Shared machinery of the ``percept`` commands: the errors and exit statuses, the device, building a metric,
reading images, batched distances and the CSV output.

>>> from percept.cli import CLIError, UsageError
>>> CLIError("a.png: not an image").exit_code, UsageError("unknown metric 'foo'").exit_code
(1, 2)

A :class:`CLIError` is reported as one line on stderr with exit status 1 (a runtime error: unreadable file,
size mismatch, missing weights); a :class:`UsageError` (bad arguments found after parsing) exits with 2.
Errors of the registry and of a metric on given images are turned into them here, naming the metric or files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from percept.guard import RunError

DEFAULT_METRIC = "watson-dft"
#: shared samples for ``compare`` with a stochastic metric (E-LPIPS) unless --samples is given
DEFAULT_STOCHASTIC_SAMPLES = 50
#: independent draws of ``dist`` with E-LPIPS unless -n is given (the reference's ex_simple_distance)
DEFAULT_DIST_SAMPLES = 200


class CLIError(RunError):
    """A runtime error: reported as one line, exit status 1."""

    exit_code = 1


class UsageError(CLIError):
    """Bad arguments found after parsing (unknown metric, bad option): exit status 2."""

    exit_code = 2


def _device(name: str):
    """The --device option: ``auto`` is CUDA if available, else the CPU (the commands do not pick MPS by
    themselves). A string torch cannot parse is a usage error (status 2); a device this machine lacks, a
    runtime error (status 1)."""
    import torch

    from percept.runinfo import select_device

    if name != "auto":
        try:
            torch.device(name)
        except (RuntimeError, ValueError) as err:
            raise UsageError(f"bad --device {name!r}: {err}") from None
    try:
        return select_device(name, auto_mps=False)
    except RunError as err:
        raise CLIError(str(err)) from None


@contextlib.contextmanager
def _metric_errors(name: str):
    """Registry errors as CLI errors: an unknown metric or option is a usage error (status 2); a metric that
    cannot be built here (module not installed, weights missing, bad option value) a runtime error (status 1)."""
    from percept import registry
    from percept.assets import ChecksumError, MissingAssetError

    try:
        yield
    except (registry.UnknownMetricError, registry.MetricOptionError) as err:
        raise UsageError(str(err)) from None
    except registry.MetricUnavailableError as err:
        raise CLIError(str(err)) from err
    except (MissingAssetError, ChecksumError) as err:
        raise CLIError(f"metric {name!r} cannot be built: {err}") from err
    except ValueError as err:
        raise CLIError(f"metric {name!r}: {err}") from err


def _canonical(name: str) -> str:
    from percept import registry

    with _metric_errors(name):
        return registry.canonical_name(name)


def _space(args) -> str:
    from percept.checks import normalize_colorspace

    return normalize_colorspace(args.colorspace)


def _read(path: Path, args):
    from percept.io import read_image

    return read_image(path, colorspace=_space(args), alpha=args.alpha, resize=args.resize, max_pixels=args.max_pixels)


def _evaluate(metric, name: str, inputs, targets, paths: str, seed: int):
    """metric(inputs, targets) as a list of floats (seeded: :func:`percept.estimation.seed_metric`); a
    ValueError from the metric becomes a CLIError naming files."""
    import torch

    from percept.estimation import seed_metric

    seed_metric(metric, seed)
    with _input_errors(paths), torch.no_grad():
        d = metric(inputs, targets)
    d = d.detach().float().reshape(-1).cpu()
    if d.numel() != inputs.shape[0]:
        raise CLIError(f"metric {name!r} returned {d.numel()} values for {inputs.shape[0]} image pair(s)")
    return d.tolist()


def _fmt(value: float) -> str:
    return f"{value:.8g}"


def _warn(message: str) -> None:
    print(f"percept: warning: {message}", file=sys.stderr)


def _progress(iterable: Iterable, total: int, desc: str) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit="pair", disable=None, leave=False, file=sys.stderr))


def _batched_distances(metric, name: str, jobs: Sequence[tuple], read, args) -> Iterator[tuple[tuple, float | None]]:
    """Yield (job, distance or None when skipped) for jobs (ref_path, img_path, *labels), batching same sizes."""
    import torch

    from percept.io import ImageReadError, check_same_size

    batch: list[tuple] = []

    def flush():
        if not batch:
            return []
        refs = torch.cat([r for _, r, _ in batch])
        imgs = torch.cat([i for _, _, i in batch])
        label = ", ".join(f"{j[0]} vs {j[1]}" for j, _, _ in batch[:3]) + (" ..." if len(batch) > 3 else "")
        try:
            values = _evaluate(metric, name, imgs, refs, label, args.seed)
        except CLIError:
            if not args.skip_errors or len(batch) == 1:
                if not args.skip_errors:
                    raise
                _warn(f"skipped {label}: {sys.exc_info()[1]}")
                return [(j, None) for j, _, _ in batch]
            # retry one pair at a time to find the failing one(s)
            out = []
            for j, r, i in batch:
                try:
                    out.append((j, _evaluate(metric, name, i, r, f"{j[0]} vs {j[1]}", args.seed)[0]))
                except CLIError as err:
                    _warn(f"skipped {err}")
                    out.append((j, None))
            return out
        return [(j, v) for (j, _, _), v in zip(batch, values)]

    for job in _progress(jobs, len(jobs), name):
        try:
            ref, img = read(job[0]), read(job[1])
            check_same_size(job[:2], (ref, img))
        except (ImageReadError, ValueError) as err:
            if not args.skip_errors:
                raise CLIError(str(err)) from err
            _warn(f"skipped {job[0]} vs {job[1]}: {err}")
            yield job, None
            continue
        ref, img = ref.to(args.device_obj), img.to(args.device_obj)
        if batch and (batch[0][1].shape != ref.shape or len(batch) >= max(1, args.batch_size)):
            yield from flush()
            batch = []
        batch.append((job, ref, img))
    yield from flush()


@contextlib.contextmanager
def _writer(args, inputs: Iterable[Path] = ()):
    """The CSV output: standard output, or ``-o FILE`` written to a temporary file that replaces FILE only
    when the command succeeds (a failing run leaves an existing FILE as it was). FILE may not be an input."""
    if args.out is None:
        yield sys.stdout
        return
    out = args.out
    if out.exists() and not out.is_file():
        raise UsageError(f"-o {out}: not a regular file; name a CSV file to write")
    for path in inputs:
        try:
            same = out.exists() and path.exists() and os.path.samefile(out, path)
        except OSError:
            same = False
        if same or out.resolve() == path.resolve():
            raise UsageError(f"-o {out} is one of the input images ({path}); name another output file")
    from percept.guard import atomic_output

    with contextlib.ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            f = stack.enter_context(atomic_output(out, "w", newline=""))
        except OSError as err:
            raise CLIError(f"{out}: cannot write ({err.strerror or err})") from None
        yield f


def _prepare(args):
    from percept.io import ImageReadError  # noqa: F401  (import errors surface early)

    if getattr(args, "batch_size", 1) < 1:
        raise UsageError("--batch-size must be at least 1")
    args.device_obj = _device(args.device)
    from percept.registry import get_metric

    name = _canonical(args.metric)
    with _metric_errors(name):
        metric = get_metric(name, colorspace=_space(args), reduction="none", device=args.device_obj,
                            **dict(args.options))
    return name, metric.eval()


def _read_pair(args):
    from percept.io import ImageReadError, ImageSizeError, check_same_size

    try:
        ref, img = _read(args.ref, args), _read(args.img, args)
        check_same_size((args.ref, args.img), (ref, img))
    except (ImageReadError, ImageSizeError) as err:
        raise CLIError(str(err)) from err
    return ref, img


def _samples_elpips(metric) -> bool:
    """Whether ``metric`` is a random E-LPIPS (draws through ``sample_distances``)."""
    return hasattr(metric, "sample_distances") and bool(getattr(metric, "stochastic", False))


@contextlib.contextmanager
def _input_errors(paths: str):
    """A ValueError of the metric on these images becomes a CLIError naming the files."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        if any(word in message for word in ("multiple", "too small", "at least", "image_size", "crop")):
            message += "; --resize HxW resamples the images"
        raise CLIError(f"{paths}: {message}") from err


__all__ = ["DEFAULT_METRIC", "DEFAULT_STOCHASTIC_SAMPLES", "DEFAULT_DIST_SAMPLES", "CLIError", "UsageError"]
