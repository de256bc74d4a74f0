"""A fact file: the facts a model reads from its explicit memory bank at run time, kept beside a checkpoint.

One JSON object per line, ``{"key": "Vorla Minet city", "value": "Paris"}``: the key is the text a question
finds the fact by (a name and an attribute), the value is the answer. `rmt memory write|edit|delete|list`
change the file; `rmt generate --facts` and `rmt eval --facts` encode it with the model (`RMT.text_bank`)
into the bank the answers read. No weight changes: editing a line changes the answer.

Writes are atomic (a temporary file renamed over the old one), so a killed command leaves the old file or the
new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rmt.errors import UsageError

DEFAULT_NAME = "facts.jsonl"


def default_path(checkpoint_dir: str | Path) -> Path:
    """The fact file beside a checkpoint folder."""
    return Path(checkpoint_dir) / DEFAULT_NAME


def read_facts(path: str | Path, missing_ok: bool = False) -> dict[str, str]:
    """key -> value, in file order. Raises UsageError naming the file and line for anything malformed."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return {}
        raise UsageError(f"{path}: no such fact file (write one with `rmt memory write`)")
    facts: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}, line {n}: bad JSON ({e.msg}); expected an object like "
                             '{"key": "Vorla Minet city", "value": "Paris"}') from None
        if not isinstance(row, dict) or set(row) != {"key", "value"}:
            raise UsageError(f"{path}, line {n}: expected an object with exactly the fields key and value, got {line!r}")
        key, value = row["key"], row["value"]
        for field, v in (("key", key), ("value", value)):
            if not isinstance(v, str) or not v.strip():
                raise UsageError(f"{path}, line {n}: {field}: expected a non-empty string, got {v!r}")
        if key in facts:
            raise UsageError(f"{path}, line {n}: key {key!r} appears twice (first value {facts[key]!r})")
        facts[key] = value
    return facts


def write_facts(path: str | Path, facts: dict[str, str]) -> None:
    """Replace the file with `facts`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for key, value in facts.items():
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bank_entries(facts: dict[str, str]) -> list[tuple[str, str]]:
    """(key text, value text) as the model writes them: a value is read as an answer, so it starts with a space
    like every answer the model was trained on (" Paris")."""
    return [(key, value if value.startswith(" ") else " " + value) for key, value in facts.items()]


# ------------------------------------------------------------------------------------- `rmt memory` commands
def _checkpoint_and_file(args) -> tuple[Path, Path]:
    from rmt.checkpoint import find_checkpoint, load_model

    ckpt = find_checkpoint(args.checkpoint)
    model, _ = load_model(ckpt)
    c = model.config
    if not (c.bank.enabled and c.reader.query_ema):
        raise UsageError(f"{ckpt}: this model has no explicit bank that reads fact texts (it needs "
                         "model.bank.enabled and model.reader.query_ema > 0, as the demo's model has)")
    return ckpt, Path(args.bank) if args.bank else default_path(ckpt)


def _write(args) -> int:
    _, path = _checkpoint_and_file(args)
    facts = read_facts(path, missing_ok=True)
    new = read_facts(args.source) if args.source else {}
    if args.key is not None or args.value is not None:
        if not (args.key and args.key.strip() and args.value and args.value.strip()):
            raise UsageError("--key and --value: expected both, as non-empty text")
        new[args.key] = args.value
    if not new:
        raise UsageError("nothing to write: expected --key K --value V, or --from FILE")
    if args.command_name == "edit":
        unknown = [k for k in new if k not in facts]
        if unknown:
            raise UsageError(f"{path}: no fact with key {unknown[0]!r} to edit (use `rmt memory write` to add one)")
    facts.update(new)
    write_facts(path, facts)
    verb = "edited" if args.command_name == "edit" else "wrote"
    print(f"{verb} {len(new)} fact(s) in {path} ({len(facts)} in all)")
    return 0


def _delete(args) -> int:
    _, path = _checkpoint_and_file(args)
    facts = read_facts(path)
    if args.key not in facts:
        raise UsageError(f"{path}: no fact with key {args.key!r}")
    del facts[args.key]
    write_facts(path, facts)
    print(f"deleted {args.key!r} from {path} ({len(facts)} left)")
    return 0


def _list(args) -> int:
    _, path = _checkpoint_and_file(args)
    for key, value in read_facts(path).items():
        print(f"{key}\t{value}")
    return 0


def register_commands(msub) -> None:
    """`rmt memory write|edit|delete|list` on the `rmt memory` subparsers."""
    def common(p):
        p.add_argument("--checkpoint", required=True, metavar="RUN", help="a run folder or checkpoint folder")
        p.add_argument("--bank", default=None, metavar="FILE",
                       help=f"the fact file (default: {DEFAULT_NAME} in the checkpoint folder)")

    for name, help_ in (("write", "add facts to a checkpoint's fact file (or replace a key's value)"),
                        ("edit", "change the value of facts already in the fact file")):
        p = msub.add_parser(name, help=help_)
        common(p)
        p.add_argument("--key", default=None, help='the text the fact is found by, e.g. "Vorla Minet city"')
        p.add_argument("--value", default=None, help='the answer, e.g. "Paris"')
        p.add_argument("--from", dest="source", default=None, metavar="FILE", help="a fact file (JSONL) to merge in")
        p.set_defaults(func=_write, command_name=name)
    p = msub.add_parser("delete", help="remove a fact from the fact file")
    common(p)
    p.add_argument("--key", required=True)
    p.set_defaults(func=_delete)
    p = msub.add_parser("list", help="print the fact file's facts, key TAB value")
    common(p)
    p.set_defaults(func=_list)
