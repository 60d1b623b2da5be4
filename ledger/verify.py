"""独立校验程序 The standalone verifier: what a regulator or a parent runs on their own machine to check
what the platform published, with the platform's public key (their own copy) and nothing else.

It needs only the Python standard library, ``cryptography`` (Ed25519) and ``ledger/merkle.py``; it imports no
Django and reads no database, so it can be handed out as two files. Every command prints each check it made,
in Chinese and English, and exits 0 when all pass, 1 with a loud explanation when anything does not match,
2 when an input cannot be read::

    python -m ledger.verify checkpoint CHECKPOINT.json --public-key HEX
    python -m ledger.verify inclusion PROOF.json --checkpoint CHECKPOINT.json --public-key HEX
    python -m ledger.verify consistency PROOF.json --old OLD.json --new NEW.json --public-key HEX
    python -m ledger.verify liability PROOF.json --checkpoint CHECKPOINT.json --public-key HEX
    python -m ledger.verify bundle DIR_OR_ZIP --public-key HEX

A checkpoint file is ``{payload, signature, key_id, public_key}``: ``payload`` is the exact JSON text that
was signed. The ``public_key`` in a file is ignored; only the key given on the command line is trusted.

What is checked, for anyone re-implementing it (hashes in ``ledger/merkle.py``):

- signatures are Ed25519 over the payload's UTF-8 bytes; payloads are canonical JSON (sorted keys, no spaces);
  a manifest's signature is over ``MANIFEST_CONTEXT`` followed by its payload;
- ``log_root`` is the RFC 9162 root over the chain's link hashes (leaf = the link's 32 raw bytes), of
  ``log_size`` = ``chain_seq`` leaves; a link hash is SHA-256(previous link hash || canonical entry JSON);
- ``liabilities_root`` / ``liabilities_total`` is the sum-tree root over one leaf per group, groups in
  Unicode code-point order of their names, each group leaf committing to that group's subtree root and total
  (``group_totals``), which must add up to the total.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import merkle

PROOF_VERSION = 1
CHECKPOINT_FORMAT = "custody-ledger-checkpoint/1"
BUNDLE_FORMAT = "custody-ledger-bundle/1"
MANIFEST_NAME = "manifest.json"
# Prefixed to a manifest's payload before signing, so a signed manifest can never pass for a checkpoint.
MANIFEST_CONTEXT = b"custody-ledger export manifest v1\n"
GENESIS_HASH = "0" * 64

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class VerificationFailed(Exception):
    """Something does not match: the published material is not what the key signed."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(f"{zh} / {en}")
        self.zh = zh
        self.en = en


class BadInput(Exception):
    """An input cannot be read at all (missing file, not JSON, not a key)."""


@dataclass
class Report:
    """What was checked, line by line, for people to read."""

    lines: list[str] = field(default_factory=list)

    def ok(self, zh: str, en: str) -> None:
        self.lines.append(f"  [通过 OK] {zh} / {en}")

    def note(self, zh: str, en: str) -> None:
        self.lines.append(f"  [说明 NOTE] {zh} / {en}")


# --- small helpers ------------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The same bytes ``ledger.canonical.canonical_json`` gives for JSON-native values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_link_hash(prev_hash: str, document: Any) -> str:
    """A hash-chain link: SHA-256(previous link hash || canonical entry document)."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(document)).hexdigest()


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


def _fail(zh: str, en: str) -> VerificationFailed:
    return VerificationFailed(zh, en)


def _get(obj: Any, name: str, kind: type | tuple[type, ...], *, where: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise _fail(f"{where}缺少字段 {name}", f"{where} has no field {name!r}")
    value = obj[name]
    # bool is an int in Python; no field here is a bool.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _fail(f"{where}的字段 {name} 格式错误", f"field {name!r} of {where} is malformed")
    return value


def _count(obj: Any, name: str, *, where: str) -> int:
    value = _get(obj, name, int, where=where)
    if value < 0:
        raise _fail(
            f"{where}的字段 {name} 为负数 ({value})", f"field {name!r} of {where} is negative ({value})"
        )
    return int(value)


def _hex(obj: Any, name: str, *, where: str, size: int = merkle.HASH_SIZE) -> bytes:
    text = _get(obj, name, str, where=where)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size or raw.hex() != text.lower():
        raise _fail(
            f"{where}的字段 {name} 不是 {size} 字节的十六进制",
            f"field {name!r} of {where} is not {size} bytes of hex",
        )
    return raw


def _hash_list(obj: Any, name: str, *, where: str) -> list[bytes]:
    values = _get(obj, name, list, where=where)
    return [_hex({name: v}, name, where=where) for v in values]


def _sum_path(obj: Any, name: str, *, where: str) -> list[merkle.SumNode]:
    values = _get(obj, name, list, where=where)
    path = []
    for value in values:
        # The sum is read as any integer, negative included, so that merkle refuses it with its reason.
        total = _get(value, "sum", int, where=where)
        path.append(merkle.SumNode(_hex(value, "hash", where=where), total))
    return path


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(text.strip())
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise BadInput(
            "公钥应为 64 位十六进制 (Ed25519 原始公钥) / "
            f"the public key must be 64 hex digits (raw Ed25519): {exc}"
        ) from exc


def check_signature(
    key: Ed25519PublicKey, message: bytes, signature_hex: str, *, what_zh: str, what: str
) -> None:
    try:
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        raise _fail(
            f"{what_zh}的签名与给定公钥不符：内容被改动，或不是该密钥签发",
            f"the signature of the {what} does not verify with the given public key: "
            "the content was changed, or another key signed it",
        ) from None


def load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"无法读取 cannot read {path}: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"不是 JSON 文件 {path} is not JSON: {exc}") from exc


# --- checkpoints --------------------------------------------------------------------------------------


def verify_checkpoint(
    document: Any, key: Ed25519PublicKey, report: Report, *, label: str = "检查点"
) -> dict[str, Any]:
    """Check a checkpoint file's signature and the consistency of what it signed; return the signed body."""
    where = {"检查点": "checkpoint", "旧检查点": "old checkpoint", "新检查点": "new checkpoint"}.get(
        label, label
    )
    payload_text = _get(document, "payload", str, where=where)
    signature = _get(document, "signature", str, where=where)
    check_signature(key, payload_text.encode(), signature, what_zh=label, what="checkpoint")
    try:
        body = json.loads(payload_text)
    except json.JSONDecodeError:
        raise _fail(f"{label}的签名内容不是 JSON", f"the signed {where} payload is not JSON") from None
    if not isinstance(body, dict) or canonical_json(body) != payload_text.encode():
        raise _fail(f"{label}的签名内容不是规范格式", f"the signed {where} payload is not in canonical form")
    seq = _count(body, "chain_seq", where=where)
    head = _hex(body, "chain_hash", where=where).hex()
    key_id = _get(body, "key_id", str, where=where)
    if document.get("key_id", key_id) != key_id:
        raise _fail(
            f"{label}文件的密钥编号与签名内容不一致", f"the {where} file's key_id differs from the signed one"
        )
    report.ok(
        f"{label}签名有效（密钥 {key_id}），签发于 {body.get('created_at')}",
        f"{where} signature valid (key {key_id}), signed at {body.get('created_at')}",
    )
    report.ok(f"哈希链头：第 {seq} 条，{head}", f"hash chain head: link {seq}, {head}")

    if "log_root" in body:
        log_root = _hex(body, "log_root", where=where)
        log_size = _count(body, "log_size", where=where)
        if log_size != seq:
            raise _fail(
                f"{label}的日志树大小 {log_size} 与哈希链长度 {seq} 不一致",
                f"{where} log tree size {log_size} differs from the chain length {seq}",
            )
        if log_size == 0 and (log_root != merkle.EMPTY_ROOT or head != GENESIS_HASH):
            raise _fail(f"{label}的空日志树根不正确", f"{where} signs an empty log with a wrong root")
        report.ok(
            f"分录日志默克尔树：{log_size} 条，根 {log_root.hex()}",
            f"entry log Merkle tree: {log_size} links, root {log_root.hex()}",
        )
        if "head_inclusion" in document and log_size:
            path = _hash_list(document, "head_inclusion", where=where)
            leaf = merkle.leaf_hash(bytes.fromhex(head))
            if not merkle.verify_inclusion(leaf, log_size - 1, log_size, path, log_root):
                raise _fail(
                    f"{label}的链头不是日志树的最后一个叶子",
                    f"the {where} chain head is not the last leaf of its signed log tree",
                )
            report.ok("链头是日志树的最后一个叶子", "the chain head is the last leaf of the log tree")

    if "liabilities_root" in body:
        _hex(body, "liabilities_root", where=where)
        total = _count(body, "liabilities_total", where=where)
        groups = _get(body, "group_totals", dict, where=where)
        for name in groups:
            _count(groups, name, where=where)
        if sum(groups.values()) != total:
            raise _fail(
                f"{label}各组合计 {yuan(sum(groups.values()))} 元与总额 {yuan(total)} 元不符",
                f"{where} group totals add up to {sum(groups.values())} fen, not the signed total {total}",
            )
        report.ok(
            f"负债总额 {yuan(total)} 元（{len(groups)} 组，各组合计相符）",
            f"liabilities total {total} fen ({len(groups)} groups, group totals add up)",
        )
    return body


def _log_of(body: dict[str, Any], label: str, label_en: str) -> tuple[int, bytes]:
    if "log_root" not in body:
        raise _fail(f"{label}未签名分录日志树根，无法校验此证明", f"the {label_en} signs no entry log root")
    return body["log_size"], bytes.fromhex(body["log_root"])


def verify_entry_inclusion(proof: Any, checkpoint: Any, key: Ed25519PublicKey, report: Report) -> None:
    body = verify_checkpoint(checkpoint, key, report)
    log_size, log_root = _log_of(body, "检查点", "checkpoint")
    where = "inclusion proof"
    if _get(proof, "type", str, where=where) != "entry_inclusion":
        raise _fail("这不是分录包含证明", "this is not an entry inclusion proof")
    size = _count(proof, "log_size", where=where)
    index = _count(proof, "index", where=where)
    if size != log_size:
        raise _fail(
            f"证明针对 {size} 条的日志树，而检查点签名的是 {log_size} 条",
            f"the proof is for a log of {size} links but the checkpoint signs {log_size}",
        )
    if index >= size:
        raise _fail(
            f"第 {index + 1} 条不在 {size} 条的日志树内", f"link {index + 1} is not in a log of {size}"
        )
    link_hash = _hex(proof, "link_hash", where=where)
    if "entry" in proof:
        prev = _hex(proof, "prev_hash", where=where).hex()
        if chain_link_hash(prev, proof["entry"]) != link_hash.hex():
            raise _fail(
                "分录内容与封存时的哈希不符：分录被改动",
                "the entry's content does not hash to its sealed link: the entry was changed",
            )
        entry = _get(proof, "entry", dict, where=where)
        report.ok(
            f"分录 {entry.get('id')}（{entry.get('kind')}）的内容与第 {index + 1} 条链接哈希相符",
            f"entry {entry.get('id')} ({entry.get('kind')}) hashes to link {index + 1}",
        )
        for posting in _get(entry, "postings", list, where="entry"):
            amount = _get(posting, "amount", int, where="posting")
            account, currency = posting.get("account"), posting.get("currency")
            report.note(
                f"{'借' if amount > 0 else '贷'} {account} {yuan(abs(amount))} {currency}",
                f"{'debit' if amount > 0 else 'credit'} {account} {abs(amount)} minor units",
            )
    if index == size - 1 and link_hash.hex() != body["chain_hash"]:
        raise _fail("最后一条链接与签名的链头不符", "the last link differs from the signed chain head")
    path = _hash_list(proof, "path", where=where)
    try:
        computed = merkle.root_from_inclusion_proof(merkle.leaf_hash(link_hash), index, size, path)
    except ValueError as exc:
        raise _fail(f"包含证明的结构错误：{exc}", f"the inclusion proof is malformed: {exc}") from None
    if computed != log_root:
        raise _fail(
            f"由证明算出的日志树根 {computed.hex()} 与签名的根 {log_root.hex()} 不符",
            f"the proof leads to root {computed.hex()}, not the signed root {log_root.hex()}",
        )
    report.ok(
        f"第 {index + 1} 条链接包含在签名的日志树中（{len(path)} 个哈希）",
        f"link {index + 1} is in the signed log tree ({len(path)} hashes)",
    )


def verify_consistency_proof(proof: Any, old: Any, new: Any, key: Ed25519PublicKey, report: Report) -> None:
    old_body = verify_checkpoint(old, key, report, label="旧检查点")
    new_body = verify_checkpoint(new, key, report, label="新检查点")
    old_size, old_root = _log_of(old_body, "旧检查点", "old checkpoint")
    new_size, new_root = _log_of(new_body, "新检查点", "new checkpoint")
    where = "consistency proof"
    if _get(proof, "type", str, where=where) != "consistency":
        raise _fail("这不是一致性证明", "this is not a consistency proof")
    if (_count(proof, "old_size", where=where), _count(proof, "new_size", where=where)) != (
        old_size,
        new_size,
    ):
        raise _fail(
            f"证明针对 {proof['old_size']} → {proof['new_size']} 条，"
            f"而检查点签名的是 {old_size} → {new_size} 条",
            f"the proof is for {proof['old_size']} -> {proof['new_size']} links, "
            f"the checkpoints sign {old_size} -> {new_size}",
        )
    if old_size > new_size:
        raise _fail(
            "旧检查点比新检查点长：历史被截短",
            "the old checkpoint is longer than the new one: history shrank",
        )
    path = _hash_list(proof, "path", where=where)
    if not merkle.verify_consistency(old_size, new_size, old_root, new_root, path):
        detail = ""
        if 0 < old_size < new_size:
            try:
                first, second = merkle.roots_from_consistency_proof(old_size, new_size, old_root, path)
                detail = f" (proof leads to old root {first.hex()}, new root {second.hex()})"
            except ValueError as exc:
                detail = f" ({exc})"
        raise _fail(
            f"新检查点的前 {old_size} 条与旧检查点签名的历史不一致：历史被改写",
            f"the first {old_size} links of the new checkpoint are not the history the old one signed: "
            f"history was rewritten{detail}",
        )
    report.ok(
        f"新检查点（{new_size} 条）只在旧检查点（{old_size} 条）之后追加，历史未被改写",
        f"the new checkpoint ({new_size} links) only appends to the old one ({old_size}); "
        "history is unchanged",
    )


def verify_liability_proof(proof: Any, checkpoint: Any, key: Ed25519PublicKey, report: Report) -> None:
    body = verify_checkpoint(checkpoint, key, report)
    if "liabilities_root" not in body:
        raise _fail("检查点未签名负债总额", "the checkpoint signs no liabilities")
    where = "liability proof"
    if _get(proof, "type", str, where=where) != "liability_inclusion":
        raise _fail("这不是负债包含证明", "this is not a liability inclusion proof")
    reference = _get(proof, "reference", str, where=where)
    group = _get(proof, "group", str, where=where)
    amount = _get(proof, "amount", int, where=where)
    salt = _hex(proof, "salt", where=where, size=merkle.SALT_SIZE)
    group_totals: dict[str, int] = body["group_totals"]
    if group not in group_totals:
        raise _fail(f"检查点中没有组 {group}", f"the checkpoint signs no group {group!r}")
    # The top tree holds the groups in name order, so a group's place is fixed by the signed list.
    names = sorted(group_totals)
    top_index, top_size = _count(proof, "top_index", where=where), _count(proof, "top_size", where=where)
    if (top_index, top_size) != (names.index(group), len(names)):
        raise _fail(
            "组在总树中的位置与签名的组列表不符",
            "the group's place in the top tree differs from the signed list",
        )
    try:
        leaf = merkle.liability_leaf(reference, amount, salt)
        group_root = merkle.sum_root_from_proof(
            leaf,
            _count(proof, "group_index", where=where),
            _count(proof, "group_size", where=where),
            _sum_path(proof, "group_path", where=where),
        )
        top = merkle.sum_root_from_proof(
            merkle.group_leaf(group, group_root),
            top_index,
            top_size,
            _sum_path(proof, "top_path", where=where),
        )
    except ValueError as exc:
        raise _fail(f"负债证明无效：{exc}", f"the liability proof is invalid: {exc}") from None
    if top.hash.hex() != body["liabilities_root"] or top.sum != body["liabilities_total"]:
        raise _fail(
            f"由证明算出的负债树根（合计 {yuan(top.sum)} 元）"
            f"与签名的根（合计 {yuan(body['liabilities_total'])} 元）不符",
            f"the proof leads to root {top.hash.hex()} totalling {top.sum} fen, not the signed root "
            f"{body['liabilities_root']} totalling {body['liabilities_total']} fen",
        )
    if group_root.sum != group_totals[group]:
        raise _fail(
            f"组 {group} 的合计 {yuan(group_root.sum)} 元与签名的 {yuan(group_totals[group])} 元不符",
            f"group {group!r} adds up to {group_root.sum} fen, not the signed {group_totals[group]}",
        )
    report.ok(
        f"{reference} 的 {yuan(amount)} 元已计入 {group} 的签名合计 {yuan(group_root.sum)} 元"
        f"及平台签名总额 {yuan(top.sum)} 元",
        f"{reference}'s {amount} fen is counted in {group}'s signed total ({group_root.sum} fen) and in the "
        f"signed grand total ({top.sum} fen)",
    )


# --- export bundles -----------------------------------------------------------------------------------


def safe_member_name(name: str) -> str:
    """A bundle member's path: relative, forward slashes, no '..', not the manifest itself."""
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or name == MANIFEST_NAME
    ):
        raise ValueError(f"unsafe file name in bundle: {name!r}")
    return name


def load_bundle(source: str | Path) -> tuple[Any, dict[str, bytes]]:
    """The manifest document and every other file of a bundle directory or zip, as bytes."""
    source = Path(source)
    files: dict[str, bytes] = {}
    try:
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                files[path.relative_to(source).as_posix()] = path.read_bytes()
        elif zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    if info.filename in files:
                        raise BadInput(f"压缩包内有重复文件 duplicate member in zip: {info.filename}")
                    files[info.filename] = archive.read(info)
        else:
            raise BadInput(f"不是目录也不是 zip 文件 not a directory or a zip file: {source}")
    except OSError as exc:
        raise BadInput(f"无法读取 cannot read {source}: {exc}") from exc
    if MANIFEST_NAME not in files:
        raise BadInput(f"缺少 {MANIFEST_NAME} / no {MANIFEST_NAME} in {source}")
    try:
        manifest = json.loads(files.pop(MANIFEST_NAME).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{MANIFEST_NAME} 不是 JSON / is not JSON: {exc}") from exc
    return manifest, files


def check_bundle(
    manifest: Any, files: dict[str, bytes], key: Ed25519PublicKey, report: Report
) -> dict[str, Any]:
    """Check the manifest's signature and every file against it; return the signed manifest body."""
    where = "manifest"
    payload_text = _get(manifest, "payload", str, where=where)
    check_signature(
        key, MANIFEST_CONTEXT + payload_text.encode(), _get(manifest, "signature", str, where=where),
        what_zh="清单", what="manifest",
    )  # fmt: skip
    try:
        body = json.loads(payload_text)
    except json.JSONDecodeError:
        raise _fail("清单的签名内容不是 JSON", "the signed manifest payload is not JSON") from None
    if _get(body, "format", str, where=where) != BUNDLE_FORMAT:
        raise _fail("清单格式未知", f"unknown manifest format {body.get('format')!r}")
    key_id = _get(body, "key_id", str, where=where)
    if manifest.get("key_id", key_id) != key_id:
        raise _fail(
            "清单文件的密钥编号与签名内容不一致", "the manifest file's key_id differs from the signed one"
        )
    report.ok(
        f"清单签名有效（密钥 {key_id}），生成于 {body.get('created_at')}",
        f"manifest signature valid (key {key_id}), created at {body.get('created_at')}",
    )
    listed: dict[str, tuple[str, int]] = {}
    for item in _get(body, "files", list, where=where):
        name = _get(item, "path", str, where=where)
        if name in listed:
            raise _fail(f"清单重复列出 {name}", f"the manifest lists {name} twice")
        listed[name] = (_hex(item, "sha256", where=where).hex(), _count(item, "size", where=where))
    for name, (digest, size) in sorted(listed.items()):
        if name not in files:
            raise _fail(f"缺少文件 {name}", f"file {name} is listed in the manifest but missing")
        data = files[name]
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise _fail(
                f"文件 {name} 与清单不符（被改动或损坏）",
                f"file {name} does not match the manifest (changed or damaged): "
                f"sha256 {hashlib.sha256(data).hexdigest()}, {len(data)} bytes; "
                f"signed {digest}, {size} bytes",
            )
        report.ok(
            f"文件 {name} 完整（{size} 字节）", f"file {name} intact ({size} bytes, sha256 {digest[:16]}…)"
        )
    extra = sorted(set(files) - set(listed))
    if extra:
        raise _fail(
            f"包内有清单未列出的文件：{', '.join(extra)}", f"files not in the manifest: {', '.join(extra)}"
        )
    return body


def verify_bundle(source: str | Path, key: Ed25519PublicKey, report: Report) -> dict[str, Any]:
    manifest, files = load_bundle(source)
    return check_bundle(manifest, files, key, report)


# --- the command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.verify",
        description="独立校验账本证明 Verify ledger checkpoints and proofs with the platform's public key.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--public-key", required=True, help="平台 Ed25519 公钥（十六进制） platform public key, hex"
        )
        return sub

    command("checkpoint", "校验检查点签名 verify a signed checkpoint").add_argument("file")
    inclusion = command("inclusion", "校验分录包含证明 verify an entry inclusion proof")
    inclusion.add_argument("proof")
    inclusion.add_argument("--checkpoint", required=True)
    consistency = command("consistency", "校验两个检查点间的一致性证明 verify a consistency proof")
    consistency.add_argument("proof")
    consistency.add_argument("--old", required=True)
    consistency.add_argument("--new", required=True)
    liability = command("liability", "校验负债包含证明 verify a liability (proof of liabilities) proof")
    liability.add_argument("proof")
    liability.add_argument("--checkpoint", required=True)
    command("bundle", "校验导出包 verify an export bundle (directory or zip)").add_argument("source")
    return parser


def run(args: argparse.Namespace, report: Report) -> None:
    key = parse_public_key(args.public_key)
    actions: dict[str, Callable[[], object]] = {
        "checkpoint": lambda: verify_checkpoint(load_json(args.file), key, report),
        "inclusion": lambda: verify_entry_inclusion(
            load_json(args.proof), load_json(args.checkpoint), key, report
        ),
        "consistency": lambda: verify_consistency_proof(
            load_json(args.proof), load_json(args.old), load_json(args.new), key, report
        ),
        "liability": lambda: verify_liability_proof(
            load_json(args.proof), load_json(args.checkpoint), key, report
        ),
        "bundle": lambda: verify_bundle(args.source, key, report),
    }
    actions[args.command]()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = Report()
    print(f"校验 Verifying: {args.command}  (公钥 public key {args.public_key.strip()[:16]}…)")
    try:
        run(args, report)
    except BadInput as exc:
        print("\n".join(report.lines))
        print(f"\n无法校验 CANNOT VERIFY: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except VerificationFailed as exc:
        return _print_failure(report, exc)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # Whatever a hand-edited file can break in the checks above: not verified, and said plainly.
        return _print_failure(
            report, VerificationFailed("输入文件结构错误，无法确认", f"the input is malformed ({exc!r})")
        )
    print("\n".join(report.lines))
    print("结论：全部校验通过 / RESULT: everything verifies")
    return EXIT_OK


def _print_failure(report: Report, exc: VerificationFailed) -> int:
    print("\n".join(report.lines))
    banner = "!" * 78
    print(f"\n{banner}\n!! 校验失败 VERIFICATION FAILED\n!! {exc.zh}\n!! {exc.en}\n{banner}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
