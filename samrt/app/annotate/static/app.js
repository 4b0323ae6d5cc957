// samrt annotate: the page. State lives on the server (per session); this draws it and sends actions.
import { decodeRuns, maskLayer, drawMarker, drawBox, rgb } from "./draw.js";

const $ = (id) => document.getElementById(id);
const S = {
  config: null, images: [], session: null, index: null, info: null, bitmap: null,
  state: null, objects: [], proposals: [], focus: 0, layers: new Map(), drag: null, serial: 0, prompts: 0,
};
const view = $("view");
const ctx = view.getContext("2d");

// -- talking to the app --------------------------------------------------------------------------
function showError(text) { $("error").textContent = text; $("error").hidden = false; }
function hideError() { $("error").hidden = true; }

async function api(method, path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (e) {
    showError(`The annotation app does not answer (${e.message}). Objects already accepted are saved in ` +
              `${S.config ? S.config.out : "the output folder"}.`);
    throw e;
  }
  const data = await resp.json().catch(() => ({ error: `HTTP ${resp.status} ${resp.statusText}` }));
  if (!resp.ok) {
    const saved = resp.status >= 500 ? ` Objects already accepted are saved in ${S.config ? S.config.out : "the output folder"}.` : "";
    showError(`${data.error}${saved}`);
    throw new Error(data.error);
  }
  hideError();
  return data;
}
const post = (path, body) => api("POST", path, body);
const sess = (action) => `/api/sessions/${S.session}/${action}`;

// -- drawing ---------------------------------------------------------------------------------------
function layer(key, runs, color, alpha) {
  if (!S.layers.has(key)) {
    const h = S.info.height, w = S.info.width;
    S.layers.set(key, maskLayer(decodeRuns(runs, h, w), h, w, color, S.config.style, alpha));
  }
  return S.layers.get(key);
}

function objectColor(id) {
  const p = S.config.style.palette;
  return p[1 + (id % (p.length - 1))];  // palette[0] is kept for the mask being made
}

function render() {
  if (!S.bitmap || !S.info) return;
  const st = S.config.style, h = S.info.height, w = S.info.width;
  ctx.clearRect(0, 0, w, h);
  ctx.drawImage(S.bitmap, 0, 0, w, h);
  for (const o of S.objects) ctx.drawImage(layer(`o${S.index}:${o.id}`, o.runs, objectColor(o.id)), 0, 0);
  // proposals: all of them faint, the highlighted one (k / x act on it) as a mask is drawn
  S.proposals.forEach((p, i) => {
    const focus = i === S.focus;
    ctx.drawImage(layer(`p${S.index}:${p.pid}:${focus}`, p.runs, st.palette[4], focus ? st.fill_alpha : 0.12), 0, 0);
  });
  let drawn = false;
  const s = S.state;
  if (s && s.candidates.length && s.selected !== null) {
    ctx.drawImage(layer(`c${S.serial}:${s.selected}`, s.candidates[s.selected].runs, st.palette[0]), 0, 0);
    drawn = true;
  }
  if (s && s.box) drawBox(ctx, s.box, st, h, w);
  if (S.drag && S.drag.box) drawBox(ctx, S.drag.box, st, h, w, true);
  if (s) for (const [x, y, label] of s.points) drawMarker(ctx, x, y, label, st, h, w);
  view.dataset.maskDrawn = String(drawn);
  view.dataset.selected = s && s.selected !== null ? String(s.selected) : "";
}

// -- panels ----------------------------------------------------------------------------------------
function renderImages(list) {
  S.images = list.images;
  const ol = $("images");
  ol.replaceChildren(...list.images.map((im) => {
    const li = document.createElement("li");
    li.textContent = `${im.name} (${im.objects})`;
    li.title = `${im.width}x${im.height}, ${im.objects} objects`;
    li.classList.toggle("done", im.objects > 0);
    li.classList.toggle("current", im.index === S.index);
    li.onclick = () => goTo(im.index).catch(() => {});
    return li;
  }));
  const done = list.images.filter((im) => im.objects > 0).length;
  $("progress-bar").max = list.images.length;
  $("progress-bar").value = done;
  $("progress-text").textContent = `${done} / ${list.images.length} images annotated`;
  $("skipped-box").hidden = list.skipped.length === 0;
  $("skipped-count").textContent = list.skipped.length;
  $("skipped").replaceChildren(...list.skipped.map((k) => {
    const li = document.createElement("li");
    li.textContent = `${k.name}: ${k.reason}`;
    return li;
  }));
  renderStats(list.stats);
}

function renderStats(st) {
  const f = (v, unit) => (v === null || v === undefined ? "–" : `${v}${unit}`);
  $("stats").textContent = `${st.objects} masks · ${f(st.seconds_per_mask, " s")} per mask · ` +
    `${f(st.masks_per_image, "")} masks per image · ${f(st.clicks_per_mask, "")} clicks per mask`;
}

function renderCandidates() {
  const s = S.state;
  const box = $("candidates");
  if (!s || !s.candidates.length) { box.textContent = "click on an object"; return; }
  box.replaceChildren(...s.candidates.map((c, k) => {
    const b = document.createElement("button");
    b.textContent = `${k + 1} · predicted IoU ${c.score.toFixed(3)} · ${c.area} px`;
    b.classList.toggle("selected", k === s.selected);
    b.dataset.candidate = String(k);
    b.onclick = () => select(k).catch(() => {});
    return b;
  }));
}

function renderObjects() {
  $("object-count").textContent = `(${S.objects.length})`;
  $("objects").replaceChildren(...S.objects.map((o) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = rgb(objectColor(o.id));
    const t = document.createElement("span");
    const how = o.source === "prefill" ? "prefill" : `${o.clicks} clicks, ${o.seconds ?? "–"} s`;
    t.textContent = `#${o.id} · ${o.area} px · IoU ${o.predicted_iou} · ${how}`;
    const del = document.createElement("button");
    del.textContent = "delete";
    del.onclick = () => removeObject(o.id).catch(() => {});
    li.append(sw, t, del);
    return li;
  }));
}

function renderProposals() {
  S.focus = Math.min(S.focus, Math.max(0, S.proposals.length - 1));
  $("proposals").replaceChildren(...S.proposals.map((p, i) => {
    const li = document.createElement("li");
    li.classList.toggle("focus", i === S.focus);
    const t = document.createElement("span");
    t.textContent = `IoU ${p.score.toFixed(2)} · stab ${p.stability_score.toFixed(2)} · ${p.area} px`;
    t.onmouseenter = () => { S.focus = i; renderProposals(); render(); };
    const keep = document.createElement("button");
    keep.textContent = "keep";
    keep.onclick = () => keepProposal(p.pid).catch(() => {});
    const drop = document.createElement("button");
    drop.textContent = "reject";
    drop.onclick = () => rejectProposal(p.pid).catch(() => {});
    li.append(t, keep, drop);
    return li;
  }));
}

function setState(state) {
  S.state = state;
  S.serial += 1;
  for (const k of [...S.layers.keys()]) if (k.startsWith("c")) S.layers.delete(k);
  renderCandidates();
  render();
}

// -- actions ---------------------------------------------------------------------------------------
async function refreshImages() { renderImages(await api("GET", "/api/images")); }

async function goTo(index) {
  if (index < 0 || index >= S.images.length) return;
  const name = S.images[index].name;
  const bitmapP = fetch(`/images/${encodeURIComponent(name)}`).then((r) => {
    if (!r.ok) throw new Error(`image ${name}: HTTP ${r.status}`);
    return r.blob();
  }).then((b) => createImageBitmap(b));
  $("encode-info").textContent = "encoding…";
  const info = await post(sess("open"), { index });
  S.bitmap = await bitmapP;
  S.index = index; S.info = info; S.objects = info.objects; S.proposals = []; S.layers.clear();
  view.width = info.width; view.height = info.height;
  fit();
  view.dataset.imageIndex = String(index);
  $("image-name").textContent = `${index + 1}/${S.images.length} ${info.name} (${info.width}x${info.height})`;
  $("encode-info").textContent = info.encoded_ahead ? "· encoded ahead" : `· waited ${info.encode_wait_ms} ms for the encoder`;
  $("latency").textContent = "";
  $("prefill-info").textContent = "";
  renderObjects(); renderProposals();
  setState({ points: [], box: null, candidates: [], selected: null, can_undo: false, can_redo: false });
  refreshImages().catch(() => {});
}

async function prompt(body) {
  const seq = ++S.prompts;   // a newer prompt's answer supersedes this one (it includes this prompt)
  const t0 = performance.now();
  const state = await post(sess("prompt"), body);
  const ms = performance.now() - t0;
  if (seq !== S.prompts) return;
  $("latency").textContent = `· click ${ms.toFixed(0)} ms (decode ${state.latency_ms} ms${state.refined ? ", refined" : ""})`;
  setState(state);
}

async function select(k) {
  if (!S.state || k >= S.state.candidates.length) return;
  setState(await post(sess("select"), { candidate: k }));
}

async function accept() {
  if (!S.state || S.state.selected === null) return;
  const r = await post(sess("accept"));
  S.objects = r.objects;
  renderObjects();
  setState(r.state);
  refreshImages().catch(() => {});
}

async function removeObject(id) {
  const r = await api("DELETE", sess(`objects/${id}`));
  S.objects = r.objects;
  renderObjects(); render(); refreshImages().catch(() => {});
}

async function prefill() {
  $("prefill-info").textContent = "running automatic masks…";
  try {
    const r = await post(sess("prefill"));
    S.proposals = r.proposals; S.focus = 0;
    $("prefill-info").textContent = `${r.proposals.length} proposals (${r.generated} generated, ${(r.amg_ms / 1000).toFixed(1)} s)`;
  } catch (e) { $("prefill-info").textContent = "failed"; throw e; }
  renderProposals(); render();
}

async function keepProposal(pid) {
  const r = await post(sess(`proposals/${pid}/accept`));
  S.objects = r.objects; S.proposals = r.proposals;
  renderObjects(); renderProposals(); render(); refreshImages().catch(() => {});
}

async function rejectProposal(pid) {
  S.proposals = (await post(sess(`proposals/${pid}/reject`))).proposals;
  renderProposals(); render();
}

const simple = (action) => async () => setState(await post(sess(action)));
const undo = simple("undo"), redo = simple("redo"), clear = simple("clear");

// The canvas keeps the image's pixels and is shown as large as the stage allows (aspect kept).
function fit() {
  if (!S.info) return;
  const stage = $("stage");
  const availW = stage.clientWidth, availH = window.innerHeight - view.getBoundingClientRect().top - 60;
  const scale = Math.min(availW / S.info.width, Math.max(availH, 200) / S.info.height);
  view.style.width = `${Math.floor(S.info.width * scale)}px`;
  view.style.height = `${Math.floor(S.info.height * scale)}px`;
}
window.addEventListener("resize", fit);

// -- input -------------------------------------------------------------------------------------------
function imagePoint(ev) {
  const r = view.getBoundingClientRect();
  return [(ev.clientX - r.left) * (view.width / r.width), (ev.clientY - r.top) * (view.height / r.height)];
}

view.addEventListener("contextmenu", (ev) => ev.preventDefault());
view.addEventListener("pointerdown", (ev) => {
  if (!S.info || (ev.button !== 0 && ev.button !== 2)) return;
  view.setPointerCapture(ev.pointerId);
  S.drag = { start: imagePoint(ev), sx: ev.clientX, sy: ev.clientY, button: ev.button, shift: ev.shiftKey, box: null };
});
view.addEventListener("pointermove", (ev) => {
  if (!S.drag || S.drag.button !== 0) return;
  if (Math.hypot(ev.clientX - S.drag.sx, ev.clientY - S.drag.sy) < 6) return;
  const [x, y] = imagePoint(ev), [x0, y0] = S.drag.start;
  S.drag.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
  render();
});
view.addEventListener("pointerup", (ev) => {
  const d = S.drag;
  S.drag = null;
  if (!d) return;
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  if (d.box) {
    const b = d.box;
    prompt({ box: [clamp(b[0], S.info.width), clamp(b[1], S.info.height), clamp(b[2], S.info.width), clamp(b[3], S.info.height)] })
      .catch(() => {});   // shown in the error banner
  } else {
    const [x, y] = d.start;
    prompt({ point: [clamp(x, S.info.width), clamp(y, S.info.height), d.button === 2 || d.shift ? 0 : 1] })
      .catch(() => {});
  }
});

document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement) return;
  const k = ev.key, ctrl = ev.ctrlKey || ev.metaKey;
  const run = (fn) => { ev.preventDefault(); fn().catch(() => {}); };
  if (["1", "2", "3"].includes(k)) run(() => select(Number(k) - 1));
  else if (k === "Enter") run(accept);
  else if (k === "Escape") run(clear);
  else if ((k === "z" && !ctrl) || (k === "z" && ctrl && !ev.shiftKey)) run(undo);
  else if (k === "y" || (k.toLowerCase() === "z" && ctrl && ev.shiftKey) || k === "Z") run(redo);
  else if (k === "n" || k === "ArrowRight") run(() => goTo(S.index + 1));
  else if (k === "p" || k === "ArrowLeft") run(() => goTo(S.index - 1));
  else if (k === "f") run(prefill);
  else if (k === "k" && S.proposals[S.focus]) run(() => keepProposal(S.proposals[S.focus].pid));
  else if (k === "x" && S.proposals[S.focus]) run(() => rejectProposal(S.proposals[S.focus].pid));
});

const click = (id, fn) => { $(id).onclick = () => fn().catch(() => {}); };
click("prev", () => goTo(S.index - 1));
click("next", () => goTo(S.index + 1));
click("undo", undo); click("redo", redo); click("clear", clear); click("accept", accept);
click("prefill", prefill);
for (const [id, fmt] of [["export-coco", "coco-rle"], ["export-polygons", "coco"], ["export-yolo", "yolo"],
                         ["export-label-studio", "label-studio"]]) {
  click(id, async () => {
    const r = await post(`/api/export/${fmt}`);
    $("prefill-info").textContent = `wrote ${r.path} (${r.images} images, ${r.annotations} annotations)`;
  });
}

// -- start -------------------------------------------------------------------------------------------
async function start() {
  S.config = await api("GET", "/api/config");
  $("shortcuts").replaceChildren(...S.config.shortcuts.map(([key, what]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"), b = document.createElement("td");
    a.textContent = key; b.textContent = what;
    tr.append(a, b);
    return tr;
  }));
  S.session = (await post("/api/sessions")).session;
  const list = await api("GET", "/api/images");
  renderImages(list);
  await goTo(list.resume_index);
  document.body.dataset.ready = "true";
}
start().catch((e) => { if ($("error").hidden) showError(`could not start: ${e.message}`); });
