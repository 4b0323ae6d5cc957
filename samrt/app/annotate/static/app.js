// samrt annotate: the page. State lives on the server (per session); this draws it and sends actions.
// The page never shows a mask for prompts the model did not answer: a failed prompt leaves its
// points with no mask (stale), which Enter does not accept; it reconnects by itself.
import { decodeRuns, maskLayer, drawMarker, drawBox, rgb, distinctColor } from "./draw.js";

const $ = (id) => document.getElementById(id);
const S = {
  config: null, images: [], session: null, index: null, info: null, bitmap: null,
  state: null, objects: [], proposals: [], focus: 0, layers: new Map(), drag: null, serial: 0, prompts: 0,
  watching: null,
};
const view = $("view");
const ctx = view.getContext("2d");

// -- talking to the app --------------------------------------------------------------------------
class ApiError extends Error {
  constructor(message, status, data) { super(message); this.status = status; this.data = data; }
}

function showError(text) { $("error").textContent = text; $("error").hidden = false; }
function hideError() { $("error").hidden = true; }
const saved = () => `Objects already accepted are saved in ${S.config ? S.config.out : "the output folder"}.`;

async function api(method, path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (e) {
    showError(`The annotation app does not answer (${e.message}). ${saved()} This page reconnects by itself.`);
    watchHealth();
    throw new ApiError(e.message, 0, null);
  }
  const data = await resp.json().catch(() => ({ error: `HTTP ${resp.status} ${resp.statusText}` }));
  if (!resp.ok) {
    if (resp.status === 404 && data.session_unknown && S.session) {
      recoverSession().catch(() => {});
    } else if (resp.status >= 500) {
      showError(`${data.error} ${saved()} This page reconnects by itself.`);
      watchHealth();
    } else {
      showError(data.error);
    }
    throw new ApiError(data.error, resp.status, data);
  }
  if (!S.watching) hideError();
  return data;
}
const post = (path, body) => api("POST", path, body);
const sess = (action) => `/api/sessions/${S.session}/${action}`;

// While something is down, ask every 1.5 s whether the app and the model server answer again.
function watchHealth() {
  if (S.watching) return;
  $("conn-info").textContent = "· reconnecting…";
  S.watching = setInterval(async () => {
    try {
      const r = await fetch("/api/health");
      if (!r.ok || (await r.json()).model_server !== "ready") return;
    } catch (e) { return; }
    clearInterval(S.watching);
    S.watching = null;
    hideError();
    $("conn-info").textContent = "· reconnected";
    document.body.dataset.reconnected = String(Number(document.body.dataset.reconnected || 0) + 1);
    refreshImages().catch(() => {});
  }, 1500);
}

// The app was restarted (it forgot this tab's session): a new session on the same image.
async function recoverSession() {
  S.session = (await post("/api/sessions")).session;
  if (S.index !== null) await goTo(S.index);
  $("conn-info").textContent = "· the annotation app restarted: the object being made was lost";
}

// -- drawing ---------------------------------------------------------------------------------------
function layer(key, runs, color, alpha, tones = null) {
  if (!S.layers.has(key)) {
    const h = S.info.height, w = S.info.width;
    S.layers.set(key, maskLayer(decodeRuns(runs, h, w), h, w, color, S.config.style, alpha, tones));
  }
  return S.layers.get(key);
}

function objectColor(id) {
  const p = S.config.style.palette;
  return p[1 + (id % (p.length - 1))];  // palette[0] is kept for the mask being made
}

const proposalColor = (pid) => distinctColor(pid);  // each proposal its own colour, however many

function render() {
  if (!S.bitmap || !S.info) return;
  const st = S.config.style, h = S.info.height, w = S.info.width;
  ctx.clearRect(0, 0, w, h);
  ctx.drawImage(S.bitmap, 0, 0, w, h);
  for (const o of S.objects) ctx.drawImage(layer(`o${S.index}:${o.id}`, o.runs, objectColor(o.id)), 0, 0);
  // proposals: each in its own colour, faint; the highlighted one (k / x act on it) filled and
  // outlined in two tones, drawn last
  const order = S.proposals.map((p, i) => i).sort((a, b) => (a === S.focus) - (b === S.focus));
  for (const i of order) {
    const p = S.proposals[i], focus = i === S.focus;
    ctx.drawImage(layer(`p${S.index}:${p.pid}:${focus}`, p.runs, proposalColor(p.pid),
                        focus ? st.fill_alpha : st.proposal_alpha, focus ? st.outline_tones : null), 0, 0);
  }
  let drawn = false;
  const s = S.state;
  if (s && s.candidates.length && s.selected !== null) {
    ctx.drawImage(layer(`c${S.serial}:${s.selected}`, s.candidates[s.selected].runs, st.palette[0], st.fill_alpha,
                        st.outline_tones), 0, 0);
    drawn = true;
  }
  if (s && s.box) drawBox(ctx, s.box, st, h, w);
  if (S.drag && S.drag.box) drawBox(ctx, S.drag.box, st, h, w, true);
  if (s) for (const [x, y, label] of s.points) drawMarker(ctx, x, y, label, st, h, w);
  view.dataset.maskDrawn = String(drawn);
  view.dataset.selected = s && s.selected !== null ? String(s.selected) : "";
  view.dataset.stale = String(Boolean(s && s.stale));
  view.dataset.focus = S.proposals.length ? String(S.proposals[S.focus].pid) : "";
}

// -- panels ----------------------------------------------------------------------------------------
function renderImages(list) {
  S.images = list.images;
  const ol = $("images");
  ol.replaceChildren(...list.images.map((im) => {
    const li = document.createElement("li");
    li.textContent = `${im.name} (${im.objects})`;
    li.title = im.broken ? `cannot be decoded: ${im.broken}` : `${im.width}x${im.height}, ${im.objects} objects`;
    li.classList.toggle("done", im.objects > 0);
    li.classList.toggle("broken", Boolean(im.broken));
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
  const gave = st.abandoned_attempts ? ` (incl. ${st.abandoned_attempts} abandoned attempts)` : "";
  $("stats").textContent = `${st.objects} masks · ${f(st.seconds_per_mask, " s")} per mask · ` +
    `${f(st.masks_per_image, "")} masks per image · ${f(st.clicks_per_mask, "")} clicks per mask${gave}`;
}

function renderCandidates() {
  const s = S.state;
  const box = $("candidates");
  if (s && s.stale) {
    const p = document.createElement("p");
    p.className = "stale";
    p.textContent = `No mask for these prompts: ${s.stale}. Click again, press c to ask again, or z to undo.`;
    box.replaceChildren(p);
    return;
  }
  if (!s || !s.candidates.length) { box.textContent = "click on an object"; return; }
  const buttons = s.candidates.map((c, k) => {
    const b = document.createElement("button");
    b.textContent = `${k + 1} · predicted IoU ${c.score.toFixed(3)} · ${c.area} px`;
    b.classList.toggle("selected", k === s.selected);
    b.dataset.candidate = String(k);
    b.onclick = () => select(k).catch(() => {});
    return b;
  });
  if (s.candidates.length === 1) {
    const more = document.createElement("button");
    more.id = "ask-candidates";
    more.textContent = "c · the three candidates";
    more.title = "boxes and later clicks get SAM's single mask; ask for its three candidates";
    more.onclick = () => candidates().catch(() => {});
    buttons.push(more);
  }
  box.replaceChildren(...buttons);
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
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = rgb(proposalColor(p.pid));
    const t = document.createElement("span");
    t.textContent = `${i === S.focus ? "▶ " : ""}IoU ${p.score.toFixed(2)} · stab ${p.stability_score.toFixed(2)} · ${p.area} px`;
    t.onmouseenter = () => { S.focus = i; renderProposals(); render(); };
    const keep = document.createElement("button");
    keep.textContent = "keep";
    keep.onclick = () => keepProposal(p.pid).catch(() => {});
    const drop = document.createElement("button");
    drop.textContent = "reject";
    drop.onclick = () => rejectProposal(p.pid).catch(() => {});
    li.append(sw, t, keep, drop);
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
  bitmapP.catch(() => {});
  $("encode-info").textContent = `· opening ${name}, encoding…`;
  let info;
  try {
    info = await post(sess("open"), { index });
    S.bitmap = await bitmapP;
  } catch (e) {
    $("encode-info").textContent = `· could not open ${name}: ${e.message}`;
    refreshImages().catch(() => {});
    throw e;
  }
  S.index = index; S.info = info; S.objects = info.objects; S.proposals = []; S.layers.clear();
  view.width = info.width; view.height = info.height;
  fit();
  view.dataset.imageIndex = String(index);
  $("image-name").textContent = `${index + 1}/${S.images.length} ${info.name} (${info.width}x${info.height})`;
  $("encode-info").textContent = info.encoded_ahead ? "· encoded ahead" : `· waited ${info.encode_wait_ms} ms for the encoder`;
  $("latency").textContent = "";
  $("prefill-info").textContent = "";
  renderObjects(); renderProposals();
  setState({ points: [], box: null, candidates: [], selected: null, stale: null, can_undo: false, can_redo: false });
  refreshImages().catch(() => {});
}

// The next image in `dir` (+1 / -1) that can be decoded.
function step(dir) {
  let i = (S.index ?? 0) + dir;
  while (i >= 0 && i < S.images.length && S.images[i].broken) i += dir;
  return goTo(i);
}

async function prompt(body) {
  const seq = ++S.prompts;   // a newer prompt's answer supersedes this one (it includes this prompt)
  const t0 = performance.now();
  let state;
  try {
    state = await post(sess("prompt"), body);
  } catch (e) {
    if (seq !== S.prompts) throw e;
    $("latency").textContent = "";
    if (e.data && e.data.state) setState(e.data.state);   // the app kept the prompt: its points, no mask
    else if (S.state && e.status !== 400) {                // no answer at all: never leave the old mask up
      const points = body.point ? [...S.state.points, body.point] : S.state.points;
      setState({ ...S.state, points, box: body.box || S.state.box, candidates: [], selected: null, stale: e.message });
    }
    throw e;
  }
  const ms = performance.now() - t0;
  if (seq !== S.prompts) return;
  $("latency").textContent = `· click ${ms.toFixed(0)} ms (decode ${state.latency_ms} ms${state.refined ? ", refined" : ""})`;
  setState(state);
}

async function candidates() {
  if (!S.state || (!S.state.points.length && !S.state.box)) return;
  const seq = ++S.prompts;
  try {
    const state = await post(sess("candidates"));
    if (seq === S.prompts) setState(state);
  } catch (e) {
    if (seq === S.prompts && e.data && e.data.state) setState(e.data.state);
    throw e;
  }
}

async function select(k) {
  if (!S.state || S.state.stale || k >= S.state.candidates.length) return;
  setState(await post(sess("select"), { candidate: k }));
}

async function accept() {
  if (!S.state || S.state.stale || S.state.selected === null) return;   // nothing shown: nothing to accept
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
  } catch (e) { $("prefill-info").textContent = `failed: ${e.message}`; throw e; }
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

async function exportAs(fmt) {
  $("export-info").textContent = "writing…";
  try {
    const r = await post(`/api/export/${fmt}`);
    $("export-info").textContent = `wrote ${r.path} (${r.images} images, ${r.annotations} annotations)`;
  } catch (e) { $("export-info").textContent = `failed: ${e.message}`; throw e; }
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
      .catch(() => {});   // shown in the error banner and the candidates panel
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
  else if (k === "c" && !ctrl) run(candidates);
  else if (k === "Enter") run(accept);
  else if (k === "Escape") run(clear);
  else if ((k === "z" && !ctrl) || (k === "z" && ctrl && !ev.shiftKey)) run(undo);
  else if (k === "y" || (k.toLowerCase() === "z" && ctrl && ev.shiftKey) || k === "Z") run(redo);
  else if (k === "n" || k === "ArrowRight") run(() => step(1));
  else if (k === "p" || k === "ArrowLeft") run(() => step(-1));
  else if (k === "f") run(prefill);
  else if (k === "k" && S.proposals[S.focus]) run(() => keepProposal(S.proposals[S.focus].pid));
  else if (k === "x" && S.proposals[S.focus]) run(() => rejectProposal(S.proposals[S.focus].pid));
});

const click = (id, fn) => { $(id).onclick = () => fn().catch(() => {}); };
click("prev", () => step(-1));
click("next", () => step(1));
click("undo", undo); click("redo", redo); click("clear", clear); click("accept", accept);
click("prefill", prefill);
for (const [id, fmt] of [["export-coco", "coco-rle"], ["export-polygons", "coco"], ["export-yolo", "yolo"],
                         ["export-label-studio", "label-studio"]]) {
  click(id, () => exportAs(fmt));
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
