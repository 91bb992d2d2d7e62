"""The corpus census's files: reading the corpus, the fingerprint, the shards, the outputs.

Documents are numbered by their place in the corpus (0-based, over every input in the order
given, bad records included), so a document keeps its number from one run to the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import AttnmapError
from ._io import atomic_path
from .analysis.corpus import CorpusSums, columns
from .analysis.scores import SCORE_NAMES

SKIP_HINT = "fix it, or pass --skip-bad to skip bad records"
FORMAT = 1


@dataclass
class Record:
    doc: int  # place in the corpus, 0-based
    value: Any  # the text, or a list of chat messages
    where: str  # "corpus.jsonl record 18", for messages


class BadRecord(Exception):
    """A record that is not a document; ``str`` names the file and record."""


def _kind(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text("utf-8")).get("splits")
            raise AttnmapError(
                f"{str(path)!r} holds several splits ({', '.join(splits or [])}); name one "
                f"folder, e.g. {str(path / (splits or ['train'])[0])!r}")
        if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
            return "datasets"
        raise AttnmapError(f"{str(path)!r} is a folder but not a saved `datasets` dataset "
                           "(no state.json); give .txt, .jsonl or .parquet files")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "txt"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise AttnmapError(f"{str(path)!r}: unknown corpus format {suffix or '(no extension)'!r}; "
                       "give .txt, .jsonl, .parquet or a saved `datasets` folder")


def check_inputs(inputs: list[str]) -> list[Path]:
    """The input paths, each readable and of a known kind."""
    if not inputs:
        raise AttnmapError("no corpus given; pass .txt, .jsonl, .parquet files or a folder")
    out = []
    for s in inputs:
        p = Path(s).expanduser()
        if not p.exists():
            raise AttnmapError(f"corpus {s!r} does not exist")
        _kind(p)
        if p.is_file() and not os.access(p, os.R_OK):
            raise AttnmapError(f"cannot read corpus {s!r}: permission denied")
        out.append(p)
    return out


def _value(raw: Any, where: str, chat: bool) -> Any:
    """A record's document, or BadRecord naming what is wrong with it."""
    if chat:
        from ._chat import check_messages

        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise BadRecord(f"{where}: --chat needs a list of messages, not plain "
                                "text") from None
        if isinstance(raw, np.ndarray):
            raw = raw.tolist()
        try:
            return check_messages(list(raw) if isinstance(raw, tuple) else raw)
        except AttnmapError as exc:
            raise BadRecord(f"{where}: {exc}") from None
    if not isinstance(raw, str):
        what = "null" if raw is None else type(raw).__name__
        raise BadRecord(f"{where}: not text ({what})")
    if not raw.strip():
        raise BadRecord(f"{where}: empty text")
    if "\x00" in raw:
        raise BadRecord(f"{where}: contains NUL bytes")
    return raw


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttnmapError(f"cannot read corpus {str(path)!r}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AttnmapError(f"{str(path)!r} line {line} is not UTF-8 text (bad byte at "
                           f"position {exc.start}); convert it with `iconv -t UTF-8`") from None


def _raw_records(path: Path, field: str, split: str) -> Iterator[tuple[Any, str]]:
    """(raw value, where) for each record of one input."""
    kind, name = _kind(path), path.name
    if kind == "txt":
        text = _read_text(path)
        if split == "blank":
            para: list[str] = []
            start = 0
            for i, line in enumerate([*text.splitlines(), ""], start=1):
                if line.strip():
                    if not para:
                        start = i
                    para.append(line)
                elif para:
                    yield "\n".join(para), f"{name} line {start}"
                    para = []
        else:
            for i, line in enumerate(text.splitlines(), start=1):
                if line.strip():  # blank lines separate nothing here: they are not documents
                    yield line, f"{name} line {i}"
    elif kind == "jsonl":
        for i, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{name} line {i}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRecord(f"{where}: not JSON ({exc.msg})"), where
                continue
            if not isinstance(obj, dict) or field not in obj:
                have = f"; its fields: {', '.join(map(str, obj))}" if isinstance(obj, dict) else ""
                yield BadRecord(f"{where}: no field {field!r}{have}; pass --field NAME"), where
                continue
            yield obj[field], where
    elif kind == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own kinds for a damaged file
            raise AttnmapError(f"cannot read {str(path)!r} as parquet: "
                               f"{str(exc).splitlines()[0]}") from None
        names = pf.schema_arrow.names
        if field not in names:
            raise AttnmapError(f"{str(path)!r} has no field {field!r} (its fields: "
                               f"{', '.join(names)}); pass --field NAME")
        i = 0
        for batch in pf.iter_batches(columns=[field], batch_size=1024):
            for v in batch.column(0).to_pylist():
                i += 1
                yield v, f"{name} record {i}"
    else:
        try:
            import datasets
        except ImportError:
            raise AttnmapError("reading a saved dataset folder needs `pip install datasets`"
                               ) from None
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise AttnmapError(f"cannot read {str(path)!r} as a saved dataset: "
                               f"{str(exc).splitlines()[0]}") from None
        if field not in ds.column_names:
            raise AttnmapError(f"{str(path)!r} has no field {field!r} (its fields: "
                               f"{', '.join(ds.column_names)}); pass --field NAME")
        i = 0
        for batch in ds.select_columns([field]).iter(batch_size=1024):
            for v in batch[field]:
                i += 1
                yield v, f"{name} record {i}"


def read_corpus(paths: list[Path], *, field: str = "text", split: str = "line",
                chat: bool = False, max_docs: int | None = None, skip_bad: bool = False
                ) -> tuple[list[Record], int]:
    """Every document (up to `max_docs`) and the number of bad records skipped."""
    if split not in ("line", "blank"):
        raise AttnmapError(f"--split must be line or blank (not {split!r})")
    out: list[Record] = []
    skipped = 0
    doc = 0
    for path in paths:
        for raw, where in _raw_records(path, field, split):
            if max_docs is not None and len(out) >= max_docs:
                break
            try:
                if isinstance(raw, BadRecord):
                    raise raw
                out.append(Record(doc, _value(raw, where, chat), where))
            except BadRecord as exc:
                if not skip_bad:
                    raise AttnmapError(f"{exc}; {SKIP_HINT}") from None
                skipped += 1
            doc += 1
    if not out:
        names = ", ".join(repr(str(p)) for p in paths)
        left = f" (all {skipped} records were bad and skipped)" if skipped else ""
        raise AttnmapError(f"the corpus {names} holds no documents{left}")
    return out, skipped


# --- fingerprint ------------------------------------------------------------------------------
def _file_digest(path: Path, whole: bool) -> str:
    """sha256 of a file, or for big weight files of its size and first and last MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if whole or size <= 4 << 20:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(fh.read(1 << 20))
            fh.seek(size - (1 << 20))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def model_fingerprint(model: str | None) -> dict[str, Any]:
    """What identifies the model: its files' digests (weights by size, head and tail)."""
    from .models import resolve

    ident, source, local = resolve(model)
    out: dict[str, Any] = {"id": ident, "source": source}
    root = Path(source)
    if local and root.is_dir():
        files = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                big = p.suffix in (".safetensors", ".bin", ".pt", ".gguf", ".msgpack", ".h5")
                files[str(p.relative_to(root))] = _file_digest(p, whole=not big)
        out["files"] = files
    return out


def corpus_fingerprint(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        h = hashlib.sha256()
        for q in files:
            h.update(str(q.relative_to(p) if p.is_dir() else q.name).encode())
            h.update(_file_digest(q, whole=True).encode())
        out.append({"path": str(p.resolve()), "sha256": h.hexdigest()})
    return out


def check_fingerprint(outdir: Path, fp: dict[str, Any], restart: bool) -> None:
    """Start fresh, resume, or refuse: the fingerprint in `outdir` must match `fp`."""
    path = outdir / "fingerprint.json"
    if restart:
        for name in ("shards", "heads.parquet", "docs.parquet", "summary.json",
                     "fingerprint.json"):
            p = outdir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif path.exists():
        try:
            old = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            old = {}
        changed = [k for k in ("format", "model", "corpus", "options")
                   if old.get(k) != fp.get(k)]
        if changed:
            raise AttnmapError(
                f"{str(outdir)!r} holds a census of a different {' and '.join(changed)}; "
                "it will not resume from it: pass --restart to start fresh, or a new -o")
    elif (outdir / "shards").is_dir() and any((outdir / "shards").glob("*.parquet")):
        raise AttnmapError(f"{str(outdir)!r} holds shards but no fingerprint.json; pass "
                           "--restart to start fresh, or a new -o")
    (outdir / "shards").mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(fp, indent=1, sort_keys=True), encoding="utf-8")


# --- shards -----------------------------------------------------------------------------------
def _arrow_table(table: dict[str, np.ndarray]) -> Any:
    import pyarrow as pa

    arrays = []
    for name in columns():
        v = table[name]
        if name in SCORE_NAMES:  # a score no row had a target for is null, not NaN
            arrays.append(pa.array(v, type=pa.float64(), mask=~np.isfinite(v)))
        elif name == "stack":
            arrays.append(pa.array(v.tolist(), type=pa.string()))
        else:
            arrays.append(pa.array(v))
    return pa.Table.from_arrays(arrays, names=columns())


def _docs_table(docs: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.table({
        "doc": pa.array([d["doc"] for d in docs], type=pa.int64()),
        "where": pa.array([d["where"] for d in docs], type=pa.string()),
        "tokens": pa.array([d["tokens"] for d in docs], type=pa.int64()),
        "tokens_in": pa.array([d["tokens_in"] for d in docs], type=pa.int64()),
        "truncated": pa.array([d["truncated"] for d in docs], type=pa.bool_()),
        "preview": pa.array([d["preview"] for d in docs], type=pa.string()),
    })


class Shards:
    """``OUTDIR/shards/NNNNN.parquet``: the rows of a batch of documents, each file written
    whole (a temporary name, then renamed), with its documents' facts in the file's metadata.
    """

    def __init__(self, outdir: Path) -> None:
        self.dir = outdir / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".*.part"):  # left by a census killed while writing
            with contextlib.suppress(OSError):
                stale.unlink()
        self.files = sorted(self.dir.glob("[0-9]*.parquet"))
        self.next = 1 + max((int(p.stem) for p in self.files), default=-1)

    def done(self) -> set[int]:
        import pyarrow.parquet as pq

        out: set[int] = set()
        for p in self.files:
            out.update(int(d["doc"]) for d in self._docs(pq.ParquetFile(p)))
        return out

    @staticmethod
    def _docs(pf: Any) -> list[dict[str, Any]]:
        meta = pf.schema_arrow.metadata or {}
        return list(json.loads(meta.get(b"attnmap.docs", b"[]")))

    def write(self, table: dict[str, np.ndarray], docs: list[dict[str, Any]]) -> Path:
        import pyarrow.parquet as pq

        t = _arrow_table(table)
        t = t.replace_schema_metadata({"attnmap.docs": json.dumps(docs)})
        path = self.dir / f"{self.next:05d}.parquet"
        self.next += 1
        with atomic_path(path) as tmp:
            pq.write_table(t, tmp)
        self.files.append(path)
        return path

    def _tables(self, keep: set[int]) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
        """Each shard's rows of documents in `keep` not seen in an earlier shard, sorted."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        seen: set[int] = set()
        for p in sorted(self.files):
            pf = pq.ParquetFile(p)
            fresh = [d for d in self._docs(pf) if d["doc"] in keep and d["doc"] not in seen]
            if not fresh:
                continue
            ids = {d["doc"] for d in fresh}
            seen |= ids
            t = pf.read().replace_schema_metadata(None)
            t = t.filter(pc.is_in(t["doc"], pa.array(sorted(ids), type=pa.int64())))
            yield t.sort_by([("doc", "ascending"), ("stack", "ascending"),
                             ("layer", "ascending"), ("head", "ascending")]), fresh

    def finish(self, outdir: Path, keep: set[int], info: dict[str, Any]) -> dict[str, Any]:
        """Write heads.parquet, docs.parquet and summary.json from the shards (documents in
        `keep` only, each once); return the summary."""
        import pyarrow.parquet as pq

        docs: list[dict[str, Any]] = []
        sums = CorpusSums()
        with atomic_path(outdir / "heads.parquet") as tmp:
            writer = None
            try:
                for t, fresh in self._tables(keep):
                    docs += fresh
                    sums.add({c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names})
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, t.schema)
                    writer.write_table(t)
            finally:
                if writer is not None:
                    writer.close()
        for t, _ in self._tables(keep):
            sums.add_spread({c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names})
        docs.sort(key=lambda d: d["doc"])
        with atomic_path(outdir / "docs.parquet") as tmp:
            pq.write_table(_docs_table(docs), tmp)
        summary = {"docs": len(docs), "tokens": int(sum(d["tokens"] for d in docs)),
                   "model": info["model"], "skipped": int(info["skipped"]),
                   "heads": sums.summary_heads()}
        with atomic_path(outdir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1, allow_nan=False), encoding="utf-8")
        return summary
