"""Provenance a person can read: ``OUTPUT.manifest.json`` beside each output file.

Written when a call starts writing (``"state": "running"``) and again when it ends
(``"complete"``, or ``"stopped"`` with the reason), so that a killed run leaves one too.
It says which operation made the file and with which arguments, from which inputs (paths
and SHA-256 of their bytes), with which versions of Python and the packages the call
used (wfl_like, ASE, numpy, and the package of each class or function among the
arguments, e.g. the calculator's), when, on which host, how the work was spread, and how
many items were computed, reused from the journal and failed, with the reasons.
``wfl-like status OUTPUT`` reads it beside the journal.  It is never read back by a run:
the journal alone decides what is reused.
"""

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import sys
from pathlib import Path

FORMAT = "wfl_like manifest 1"
SUFFIX = ".manifest.json"
# failures listed in full (the journal keeps them all; `wfl-like status` lists from there)
FAILURES_LISTED = 1000


def manifest_path(output_path):
    """Where the manifest of an output file lives: ``OUTPUT.manifest.json`` beside it."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + SUFFIX)


def read_manifest(output_path):
    """The manifest of ``output_path`` as a dict, or None when there is none (or it cannot be read)."""
    try:
        content = json.loads(manifest_path(output_path).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("format") == FORMAT else None


class Manifest:
    """The manifest of one call, written at its start and rewritten at its end.

    Parameters
    ----------
    call : OpCall
        The operation and its arguments.
    inputs : iterable
        Input files are listed with their SHA-256; other inputs by their kind.
    outputs : OutputSpec
        Has files (a manifest is only kept for file outputs).
    where : dict
        How the work is spread (workers, chunk size, an executor, queued jobs).
    digests : list of (str, str), optional
        ``(path, SHA-256)`` of the input files, where the journal already hashed them.
    """

    def __init__(self, call, inputs, outputs, where, digests=None):
        from wfl_like.autoparallelize.resume.fingerprint import describe
        from wfl_like.progress import public_name

        self.paths = [manifest_path(path) for path in outputs.paths]
        self.content = {
            "format": FORMAT,
            "state": "running",
            "outputs": [str(Path(path).resolve()) for path in outputs.paths],
            "operation": public_name(call.name),
            "operation_full_name": call.name,
            "arguments": [describe(arg) for arg in call.args],
            "keyword_arguments": {key: describe(value) for key, value in call.kwargs.items()},
            "inputs": _inputs(inputs, digests),
            "inputs_read_kwargs": _read_kwargs(inputs),
            "versions": _versions((call.op, *call.args, *call.kwargs.values())),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "working_directory": os.getcwd(),
            "run_by": where,
            "started": _now(),
        }

    def write(self):
        """Write (or rewrite) the manifest beside every output file, each atomically."""
        text = json.dumps(self.content, indent=2, ensure_ascii=False, default=str) + "\n"
        for path in self.paths:
            partial = path.with_name(path.name + ".partial")
            try:
                partial.write_text(text)
                os.replace(partial, path)
            except OSError:
                # provenance is a courtesy: a directory that takes the outputs but not this
                # file must not cost the run
                partial.unlink(missing_ok=True)

    def finish(self, state, n_items=None, failures=(), computed=None, reused=None, reason=None):
        """Rewrite it as the call ends: ``state`` is ``"complete"`` or ``"stopped"``."""
        failures = list(failures)
        self.content.update(state=state, finished=_now())
        items = {"total": n_items, "failed": len(failures)}
        if computed is not None:
            items.update(computed=computed, reused=reused)
        self.content["items"] = items
        self.content["failures"] = [{"index": f.index, "reason": f.reason} for f in failures[:FAILURES_LISTED]]
        if reason is not None:
            self.content["stopped_by"] = reason
        self.write()


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _inputs(inputs, digests):
    from wfl_like.configset import ConfigSet

    if digests is not None:
        return [{"path": path, "sha256": digest} for path, digest in digests]
    if isinstance(inputs, ConfigSet) and inputs.files():
        return [{"path": str(Path(path).resolve()), "sha256": _sha256(path)} for path in inputs.files()]
    return {"in_memory": type(inputs).__name__}


def _read_kwargs(inputs):
    from wfl_like.configset import ConfigSet

    if not isinstance(inputs, ConfigSet):
        return None
    # kept only where it is plain data (an index "10:20", a format): it says how the inputs were read
    try:
        return json.loads(json.dumps(inputs.read_kwargs))
    except (TypeError, ValueError):
        return {key: str(value) for key, value in inputs.read_kwargs.items()}


def _sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return digest.hexdigest()


def _versions(values):
    """Python's version and those of the packages behind ``values`` (classes, functions,
    instances, nested in tuples, lists and dicts), besides wfl_like, ASE and numpy."""
    packages = {"wfl_like", "ase", "numpy"}
    for value in _flattened(values, depth=3):
        module = getattr(value, "__module__", None) or getattr(type(value), "__module__", None)
        if isinstance(module, str) and module.split(".")[0] not in ("builtins", "__main__"):
            packages.add(module.split(".")[0])
    versions = {"python": platform.python_version()}
    for name in sorted(packages):
        versions[name] = _version_of(name)
    return versions


def _flattened(values, depth):
    for value in values:
        yield value
        if depth and isinstance(value, (tuple, list)):
            yield from _flattened(value, depth - 1)
        elif depth and isinstance(value, dict):
            yield from _flattened(value.values(), depth - 1)


def _version_of(package):
    module = sys.modules.get(package)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
