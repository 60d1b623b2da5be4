/* Checks a parent's proof of liabilities in the browser, with the platform's public key alone, exactly as
 * `python -m ledger.verify liability` does (ledger/verify.py, ledger/merkle.py):
 *   1. the checkpoint's Ed25519 signature over its payload's UTF-8 bytes;
 *   2. the signed payload names a liabilities root, a total and per-institution totals that add up;
 *   3. the contract's leaf: SHA-256("leaf" || salt || len(ref) || ref || amount), amounts 8-byte big-endian;
 *   4. the group path (RFC 9162 walk) gives the institution's subtree root, whose sum is its signed total;
 *   5. the group leaf SHA-256("group" || len(name) || name || root || sum) sits where the signed, sorted list
 *      of groups puts it, and the top path leads to the signed root and total.
 * Sums are BigInt; a negative or oversized sum anywhere fails, as in the Python verifier. */
(function () {
  "use strict";
  const MAX_SUM = (1n << 64n) - 1n;
  const enc = new TextEncoder();
  const text = (k) => {
    const node = document.querySelector('#verify-text').content.querySelector('[data-k="' + k + '"]');
    return node ? node.textContent : k;
  };
  const hex = (s) => {
    if (typeof s !== "string" || s.length % 2 || /[^0-9a-f]/i.test(s)) throw new Error("bad hex");
    const out = new Uint8Array(s.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
    return out;
  };
  const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };
  const u64 = (v) => {
    const n = BigInt(v);
    if (n < 0n || n > MAX_SUM) throw new Error("amount out of range: " + v);
    const out = new Uint8Array(8);
    let x = n;
    for (let i = 7; i >= 0; i--) { out[i] = Number(x & 0xffn); x >>= 8n; }
    return out;
  };
  const u32 = (n) => new Uint8Array([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
  const sha = async (data) => new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const node = async (l, r) => {
    const total = l.sum + r.sum;
    if (total > MAX_SUM) throw new Error("sum overflow");
    return { hash: await sha(concat(new Uint8Array([1]), l.hash, u64(l.sum), r.hash, u64(r.sum))), sum: total };
  };
  const walk = async (leaf, index, size, path) => {
    if (!(index >= 0 && index < size)) throw new Error("index outside the tree");
    let fn = index, sn = size - 1, r = leaf;
    for (const p of path) {
      const sib = { hash: hex(p.hash), sum: BigInt(p.sum) };
      if (sib.hash.length !== 32 || sib.sum < 0n) throw new Error("malformed path node");
      if (sn === 0) throw new Error("path longer than the tree is deep");
      if ((fn & 1) || fn === sn) {
        r = await node(sib, r);
        if (!(fn & 1)) { while (!(fn & 1) && fn !== 0) { fn >>= 1; sn >>= 1; } }
      } else {
        r = await node(r, sib);
      }
      fn >>= 1; sn >>= 1;
    }
    if (sn !== 0) throw new Error("path shorter than the tree is deep");
    return r;
  };
  const codepointCompare = (a, b) => {
    const x = Array.from(a, (c) => c.codePointAt(0)), y = Array.from(b, (c) => c.codePointAt(0));
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  };
  const yuan = (fen) => {
    const n = BigInt(fen), neg = n < 0n, a = neg ? -n : n;
    return (neg ? "-" : "") + "¥" + (a / 100n).toLocaleString("en-US") + "." + String(a % 100n).padStart(2, "0");
  };

  async function run(data, step) {
    const cp = data.checkpoint, proof = data.proof;
    const key = await crypto.subtle.importKey("raw", hex(data.public_key), { name: "Ed25519" }, false, ["verify"]);
    const signed = await crypto.subtle.verify("Ed25519", key, hex(cp.signature), enc.encode(cp.payload));
    step("signature", signed, "key " + data.key_id + " · " + data.public_key.slice(0, 16) + "…");
    if (!signed) return false;
    const body = JSON.parse(cp.payload);
    const groups = body.group_totals || {};
    const hasRoot = typeof body.liabilities_root === "string" && body.key_id === cp.key_id;
    step("payload", hasRoot, "checkpoint #" + cp.checkpoint_id + " · " + (body.created_at || ""));
    if (!hasRoot) return false;
    const sumGroups = Object.values(groups).reduce((n, v) => n + BigInt(v), 0n);
    const totalOk = sumGroups === BigInt(body.liabilities_total);
    step("totals", totalOk, Object.keys(groups).length + " · " + yuan(body.liabilities_total));
    if (!totalOk) return false;
    const ref = enc.encode(proof.reference);
    const leafHash = await sha(concat(enc.encode("leaf"), hex(proof.salt), u32(ref.length), ref, u64(proof.amount)));
    const leaf = { hash: leafHash, sum: BigInt(proof.amount) };
    step("leaf", hex(proof.salt).length === 32, proof.reference + " · " + yuan(proof.amount) + " · " + toHex(leafHash).slice(0, 16) + "…");
    const groupRoot = await walk(leaf, proof.group_index, proof.group_size, proof.group_path);
    const groupOk = proof.group in groups && groupRoot.sum === BigInt(groups[proof.group]);
    step("group", groupOk, proof.group + " · " + yuan(groupRoot.sum));
    if (!groupOk) return false;
    const names = Object.keys(groups).sort(codepointCompare);
    const placeOk = names.indexOf(proof.group) === proof.top_index && names.length === proof.top_size;
    step("position", placeOk, (proof.top_index + 1) + " / " + proof.top_size);
    if (!placeOk) return false;
    const gname = enc.encode(proof.group);
    const groupLeaf = {
      hash: await sha(concat(enc.encode("group"), u32(gname.length), gname, groupRoot.hash, u64(groupRoot.sum))),
      sum: groupRoot.sum,
    };
    const top = await walk(groupLeaf, proof.top_index, proof.top_size, proof.top_path);
    const rootOk = toHex(top.hash) === body.liabilities_root && top.sum === BigInt(body.liabilities_total);
    step("root", rootOk, toHex(top.hash).slice(0, 16) + "… · " + yuan(top.sum));
    return rootOk;
  }

  function start() {
    const holder = document.getElementById("proof-data");
    const status = document.getElementById("verify-status");
    const list = document.getElementById("verify-steps");
    if (!holder || !status || !list) return;
    const step = (k, ok, detail) => {
      const li = document.createElement("li");
      li.className = ok ? "pass" : "fail";
      li.dataset.check = k;
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.textContent = ok ? "✓" : "✗";
      li.append(mark, " " + text(k));
      if (detail) {
        const small = document.createElement("small");
        small.textContent = detail;
        li.append(document.createElement("br"), small);
      }
      list.append(li);
    };
    if (!(window.crypto && crypto.subtle)) {
      status.textContent = text("nocrypto");
      status.className = "notice error";
      return;
    }
    run(JSON.parse(holder.textContent), step).then((ok) => {
      status.textContent = text(ok ? "ok" : "fail");
      status.className = "notice " + (ok ? "success" : "error");
      status.dataset.result = ok ? "verified" : "failed";
    }).catch((err) => {
      status.textContent = text("fail") + " (" + err.message + ")";
      status.className = "notice error";
      status.dataset.result = "error";
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
