"""The pretrain cache: a finished pretraining stored once per distinct pretraining and reused by every
later run that shares it (docs/cache.md).

An entry is ``<root>/pretrain/<key>/`` with ``model.pt`` (the stage's model file, as
``checkpoints/pretrain.pt`` holds it), ``metrics.jsonl`` (its epoch records), ``predictions.json`` (when
it had a test split), ``key.json`` (what the key hashes, for people) and ``done``. It is built in a
temporary folder and renamed into place, so a reader never sees half an entry; ``<key>.lock`` (flock)
lets one process compute while the others wait, then read what it stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from sftcore._config.schema import RunConfig
from sftcore._fileio import reader, storage
from sftcore._plugins.contracts import FileSet, ImageSet
from sftcore._plugins.kinds import KIND_TABLE
from sftcore._rundir import checkpoints
from sftcore._rundir import layout as rundir
from sftcore._rundir.checkpoints import MODEL_KEYS
from sftcore._rundir.outputs import MetricsLog
from sftcore._runtime import distributed
from sftcore.errors import SftError

if TYPE_CHECKING:  # pragma: no cover
    from sftcore._data.stage import StageData
    from sftcore._plugins.contracts import Backbone
    from sftcore._run.pipeline import Pipeline

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename alone keeps entries whole
    fcntl = None  # type: ignore[assignment]

ENV = "SFT_CACHE_DIR"
# a lock file is never followed through a link (which would create or lock its target), as the run lock
LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
DONE = "done"


def cache_root() -> Path:
    """``$SFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/sftcore``, else ``~/.cache/sftcore``."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sftcore"


# --------------------------------------------------------------------------- the key
def _update_tensor(h, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def set_fingerprint(data: ImageSet | FileSet | None) -> str | None:
    """The content of one split: an ImageSet's uint8 bytes and labels; a FileSet's labels and, when its
    loader lists ``paths`` (the built-in image folders), each used file's path, size and mtime, else the
    decoded images themselves."""
    if data is None:
        return None
    h = hashlib.sha256()
    _update_tensor(h, data.labels)
    if isinstance(data, ImageSet):
        _update_tensor(h, data.images)
        return h.hexdigest()
    h.update(repr(tuple(data.image_shape)).encode())
    paths = getattr(data.load, "paths", None)
    for i in range(len(data)):
        j = int(i if data.index is None else data.index[i])
        if paths is not None:
            stat = os.stat(paths[j])
            h.update(f"{os.path.abspath(paths[j])}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        else:
            _update_tensor(h, data.item(i))
    return h.hexdigest()


def weights_fingerprint(*modules: torch.nn.Module | None) -> str:
    """The starting weights: a backbone that loads a file or a hub download is keyed by what it loaded."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items() if module is not None else ():
            h.update(name.encode())
            _update_tensor(h, tensor)
    return h.hexdigest()


def component_plugins(config: RunConfig, registry) -> dict:
    """``{kind/name: [distribution, version]}`` of every component the backbone and pretrain stage name."""
    from sftcore._plugins.manager import plugin_info

    out = {}
    for kind in KIND_TABLE:
        if kind.config == "backbone":
            value = config.backbone
        elif kind.config.startswith("<stage>."):
            value = getattr(config.stage("pretrain"), kind.config.split(".", 1)[1])
        else:
            continue
        for entry in value if isinstance(value, list) else [value]:
            name = getattr(entry, "name", None)  # a Component or the DatasetConfig; None: nothing configured
            if not isinstance(name, str):
                continue
            try:
                info = plugin_info(registry.get(kind.name, name).plugin)
            except Exception:  # an unknown name failed the config already; nothing to key here
                continue
            out[f"{kind.name}/{name}"] = [info.distribution, info.version] if info else None
    return out


def key_fields(config: RunConfig, registry, perf, world: int, seed: int, run_seed: int, data, backbone) -> dict:
    """Everything that decides the pretrained weights, and nothing else (run name, callbacks, finetune,
    baseline, checkpoints and the output folder are not in it): docs/cache.md lists it."""
    from sftcore._version import __version__

    splits = {what: set_fingerprint(getattr(data, what)) for what in ("train", "val", "test")}
    return {
        "format": 1,
        "sftcore": __version__,
        "torch": torch.__version__,
        "backbone": config.backbone.entry(),
        "pretrain": config.stage("pretrain").raw,
        "seed": seed,
        "run_seed": run_seed,
        "pretrain_per_seed": config.pretrain_per_seed,
        "plugins": component_plugins(config, registry),
        "data": {
            "name": data.name,
            "classes": list(data.classes),
            "mean": list(map(float, data.mean)),
            "std": list(map(float, data.std)),
            "augment": repr(data.augment),
            **splits,
        },
        "start": {
            "weights": weights_fingerprint(backbone.features, backbone.head),
            "source_classes": backbone.source_classes,
            "mean": backbone.mean,
            "std": backbone.std,
        },
        "performance": {
            "device": perf.device.type,
            "device_name": _device_name(perf.device),
            "precision": perf.describe()["precision"],
            "channels_last": perf.channels_last,
            "compile": perf.compile,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "world_size": world,
        },
    }


def _device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def key_of(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- entries
class Corrupt(Exception):
    """An entry that cannot be read: ignored, removed and recomputed."""


@dataclass
class Cached:
    state: dict  # the model file
    records: list[dict]
    predictions: dict | None


class Entry:
    """One key's folder in the cache."""

    def __init__(self, key: str, fields: dict, root: Path | None = None):
        self.key, self.fields = key, fields
        self.root = (root or cache_root()) / "pretrain"
        self.folder = self.root / key

    def problem(self) -> str | None:
        """Why this cache folder cannot be used (not writable, say), or None."""
        try:
            storage.make_dir(self.root)
            os.close(
                os.open(self.root / f"{self.key}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            )
        except (OSError, storage.StorageError) as exc:
            return (
                str(exc)
                if isinstance(exc, storage.StorageError)
                else f"cannot write '{self.root}': {exc.strerror or exc}"
            )
        return None

    @contextlib.contextmanager
    def locked(self, say: Callable[[str], None]) -> Iterator[None]:
        """Hold ``<key>.lock`` while looking up and, on a miss, computing: concurrent runs wait, then hit."""
        storage.make_dir(self.root)
        fd = os.open(self.root / f"{self.key}.lock", LOCK_FLAGS, 0o666)
        try:
            if fcntl is not None:
                _flock(fd, say, self.key)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> Cached | None:
        """The entry, None when there is none; Corrupt when it is there but unreadable, filed under another
        key, or its metadata is not what a run reads from it (the run then recomputes it)."""
        if not self.folder.exists():
            return None
        if not (self.folder / DONE).is_file():
            raise Corrupt("it has no 'done' marker")
        self._check_key()
        try:
            state = storage.load(self.folder / "model.pt", "cache entry", "it is recomputed")
            text = reader.read_text(self.folder / "metrics.jsonl", "cache metrics", limit=reader.MAX_FILE_BYTES)
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
            pred = self.folder / "predictions.json"
            predictions = reader.read_json(pred, "cache predictions") if pred.exists() else None
        except (storage.StorageError, ValueError) as exc:
            raise Corrupt(f"{type(exc).__name__}: {str(exc)[:160]}") from None
        _check_cached(state, records, predictions)
        return Cached(state, records, predictions)

    def _check_key(self) -> None:
        """The entry must be the one looked up: its key.json holds the same key and the same fields."""
        try:
            stored = reader.read_json(self.folder / "key.json", "cache key")
        except storage.StorageError as exc:
            raise Corrupt(str(exc)[:160]) from None
        expected = json.loads(json.dumps({"key": self.key, **self.fields}, default=str))
        if stored != expected:
            raise Corrupt("it is filed under another key (its key.json does not match what it was looked up by)")

    def discard(self) -> None:
        """Move the entry aside (one rename), then delete it: a reader never sees it half deleted."""
        trash = self.root / f".trash-{self.key}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(self.folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def store(self, cached: Cached) -> None:
        """Build the entry in a temporary folder, then rename it into place; StorageError if it cannot."""
        storage.make_dir(self.root)
        tmp = self.root / f".tmp-{self.key}-{uuid.uuid4().hex[:8]}"
        try:
            storage.make_dir(tmp)
            storage.save(cached.state, tmp / "model.pt")
            storage.write_text(tmp / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in cached.records))
            if cached.predictions is not None:
                storage.write_json(tmp / "predictions.json", cached.predictions, indent=None)
            storage.write_json(tmp / "key.json", {"key": self.key, **self.fields})
            storage.write_text(tmp / DONE, "")
            try:
                os.rename(tmp, self.folder)
            except OSError as exc:  # another process (no flock here) stored it first: theirs is as good
                if not self.folder.is_dir():
                    raise storage.StorageError(f"cannot write '{self.folder}': {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_cached(state, records, predictions) -> None:
    """What a run reads from an entry, checked before it is used: a damaged entry is recomputed, not a crash."""
    if not isinstance(state, dict) or any(k not in state for k in MODEL_KEYS) or not isinstance(state["model"], dict):
        raise Corrupt("model.pt is not a sftcore model file")
    result = state.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("test_accuracy", "missing"), (int, float, type(None))):
        raise Corrupt("model.pt holds no stage result with a test_accuracy")
    if not all(isinstance(r, dict) for r in records):
        raise Corrupt("metrics.jsonl holds something other than records")
    if predictions is not None and not isinstance(predictions, dict):
        raise Corrupt("predictions.json is not a predictions mapping")


def _flock(fd: int, say: Callable[[str], None], key: str) -> None:
    import errno

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no locks on this file system
            return
    say(f"pretrain: another run is computing cache entry {key[:12]}; waiting for it")
    fcntl.flock(fd, fcntl.LOCK_EX)


# --------------------------------------------------------------------------- the cache as a run uses it
class PretrainCache:
    """The pretrain cache as one run uses it: the entry of a pretraining, looked up under its lock; a hit is
    reused as a resumed run reuses a finished stage, a miss is trained and stored. Works through the pipeline's
    public seams (``train_pretrain``, ``stage_model``, ``transforms``, ``model_file``, ``say``)."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe

    def entry(self, backbone: Backbone, data: StageData, seed: int, tag: str) -> Entry | None:
        """The cache entry of this pretraining; None when the cache is off or a resumed run has its own."""
        pipe = self.pipe
        progress, final = checkpoints.paths(pipe.run_dir, tag, pipe.config.checkpoints)
        if not pipe.config.pretrain_cache or (
            pipe.resume and any(p is not None and p.exists() for p in (progress, final))
        ):
            return None
        if pipe.events.callbacks:  # they must see every pretrain epoch, and may stop it early
            pipe.say(f"{tag}: not using the pretrain cache: the run has callbacks, which see the pretraining")
            return None
        world = distributed.world_size()
        fields = key_fields(pipe.config, pipe.registry, pipe.perf, world, seed, pipe.seed, data, backbone)
        entry = Entry(key_of(fields), fields)
        problem = distributed.broadcast_object(entry.problem() if distributed.is_main() else None)
        if problem is not None:  # the run itself is fine: it only pretrains again
            pipe.say(
                f"{tag}: not using the pretrain cache ({problem}); set {ENV} to a writable folder, or "
                "pretrain_cache: false"
            )
            return None
        return entry

    def pretrain(self, entry: Entry, backbone: Backbone, data: StageData, seed: int, tag: str):
        """Rank 0 looks the entry up under its lock and tells every rank; a hit loads it everywhere, a miss
        trains as usual and rank 0 stores the result before letting the next run in."""
        pipe, main = self.pipe, distributed.is_main()
        with entry.locked(pipe.say) if main else contextlib.nullcontext():
            found = None
            if main:
                try:
                    found = entry.read()
                except Corrupt as exc:
                    pipe.say(f"{tag}: ignoring unreadable cache entry {entry.key[:12]} ({exc}); recomputing it")
                    entry.discard()
            if distributed.broadcast_object(found is not None):
                hit = found if main else entry.read()
                assert hit is not None  # rank 0 found it: it is there for every rank
                return self._reuse(hit, entry, backbone, data, seed, tag)
            records = _Records(pipe.log)
            pipe.log = cast("MetricsLog", records)  # writes through to the run's log, keeping a copy
            try:
                model, result = pipe.train_pretrain(backbone, data, seed, tag)
            finally:
                pipe.log = records.log
            stored = self._store(entry, model, result, records.records, backbone, data, seed, tag) if main else True
        result["cache"] = {"key": entry.key, "path": str(entry.folder) if stored else None, "hit": False}
        return model, result

    def _store(self, entry: Entry, model, result: dict, records: list, backbone, data, seed: int, tag: str) -> bool:
        """The stage's model file (as train_stage writes it), epoch records and test predictions."""
        pipe = self.pipe
        scfg = pipe.config.stage("pretrain")
        tf, _ = pipe.transforms(data, backbone, scfg, "pretrain")
        state = pipe.model_file("pretrain", tag, seed, model, data, tf, scfg, result)
        pred = rundir.predictions_file(pipe.run_dir, tag) if pipe.run_dir is not None else None
        try:
            predictions = json.loads(pred.read_text()) if pred is not None and pred.exists() else None
            entry.store(Cached(state, records, predictions))
        except (OSError, ValueError, SftError) as exc:  # the run itself is fine: only the reuse is lost
            pipe.say(f"{tag}: could not store cache entry {entry.key[:12]} ({str(exc)[:200]}); continuing")
            return False
        pipe.say(
            f"{tag}: stored as cache entry {entry.key[:12]} ({entry.folder}); runs with the same pretraining reuse it"
        )
        return True

    def _reuse(self, found: Cached, entry: Entry, backbone, data, seed: int, tag: str):
        """The cached stage as a resumed run reuses a finished one: weights into the model, the model file
        into checkpoints/, the epoch records into metrics.jsonl, the predictions into predictions/."""
        pipe, t0 = self.pipe, time.perf_counter()
        scfg = pipe.config.stage("pretrain")
        model = pipe.stage_model("pretrain", scfg, backbone, data, backbone.head, backbone.source_classes, seed)
        fix = f"remove the cache entry (rm -rf {entry.folder}) or set pretrain_cache: false"
        checkpoints.load_model(model, found.state, entry.folder / "model.pt", fix=fix)
        state = {**{k: found.state[k] for k in MODEL_KEYS}, "tag": tag}
        _, final = checkpoints.paths(pipe.run_dir, tag, pipe.config.checkpoints)
        if distributed.is_main():
            if final is not None:
                checkpoints.save_model_file(final, **state)
            for record in found.records:
                pipe.log.write({**record, "stage": tag})
            if found.predictions is not None and pipe.run_dir is not None:
                storage.make_dir(pipe.run_dir / rundir.PREDICTIONS)
                predictions = {**found.predictions, "stage": tag}
                storage.write_json(rundir.predictions_file(pipe.run_dir, tag), predictions, indent=None)
        result = dict(found.state["result"], seconds=round(time.perf_counter() - t0, 3))
        result["cache"] = {"key": entry.key, "path": str(entry.folder), "hit": True}
        pipe.say(f"{tag}: reused cache entry {entry.key[:12]} ({entry.folder})")
        return model, result


class _Records:
    """metrics.jsonl as the pretrain stage writes it, keeping its records for the cache entry."""

    def __init__(self, log: MetricsLog):
        self.log, self.records = log, cast(list[dict], [])

    def write(self, record: dict) -> None:
        self.records.append(dict(record))
        self.log.write(record)

    def __getattr__(self, name: str):
        return getattr(self.log, name)
