// The drawing of samrt.visualize.overlay, in a canvas: masks filled and outlined, clicks marked by
// shape (foreground: a green disc with a plus; background: a red square with a cross), boxes.
// The numbers come from samrt.visualize.STYLE (served as /api/config).

export function scaled(value, height, width, minimum) {
  return Math.max(minimum, Math.round(value * Math.max(height, width) / 512));
}

// Row-major runs (off, on, off, ...) -> Uint8Array of 0/1 (samrt.app.annotate.masks.to_runs).
export function decodeRuns(runs, height, width) {
  const mask = new Uint8Array(height * width);
  let pos = 0;
  for (let i = 0; i < runs.length; i++) {
    if (i % 2 === 1) mask.fill(1, pos, pos + runs[i]);
    pos += runs[i];
  }
  if (pos !== height * width) throw new Error(`mask runs cover ${pos} pixels, expected ${height}x${width}`);
  return mask;
}

// Pixels of the mask within `steps` 4-neighbour steps of its boundary (samrt.visualize.mask_outline,
// which erodes `steps` times; the same set, found here by a breadth-first walk in from the boundary
// so that the cost follows the outline's length, not the image's area).
export function maskOutline(mask, height, width, steps) {
  const depth = new Uint8Array(height * width);   // 0: not reached; d: d-th ring in from the boundary
  let queue = [];
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      const i = row + x;
      if (mask[i] && (y === 0 || y === height - 1 || x === 0 || x === width - 1 ||
          !mask[i - width] || !mask[i + width] || !mask[i - 1] || !mask[i + 1])) {
        depth[i] = 1;
        queue.push(i);
      }
    }
  }
  for (let d = 2; d <= Math.max(1, steps) && queue.length; d++) {
    const next = [];
    for (const i of queue) {
      const x = i % width;
      for (const j of [i - width, i + width, x > 0 ? i - 1 : -1, x < width - 1 ? i + 1 : -1]) {
        if (j >= 0 && j < mask.length && mask[j] && !depth[j]) { depth[j] = d; next.push(j); }
      }
    }
    queue = next;
  }
  return depth;   // nonzero where the outline is
}

// The outline's two tones (samrt.visualize.two_tone_outline): its outer half (rings 1..ceil(w/2)
// from the boundary) and the rest, so that one of them stands out on any image.
export function outerRings(width) { return Math.ceil(Math.max(1, width) / 2); }

// An offscreen canvas holding the mask's fill and outline, to draw over the image (source-over).
// `tones` [dark, light]: the outline in two tones (the mask being made), else in `color`.
export function maskLayer(mask, height, width, color, style, fillAlpha = style.fill_alpha, tones = null) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  const steps = scaled(style.outline_width, height, width, 1);
  const edge = maskOutline(mask, height, width, steps);
  const outer = outerRings(steps);
  const a = Math.round(fillAlpha * 255), shade = style.outline_shade;
  const oa = Math.round(style.outline_alpha * 255);
  const put = (o, c, alpha) => { img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = alpha; };
  const shaded = [color[0] * shade, color[1] * shade, color[2] * shade];
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    const o = i * 4;
    if (edge[i]) put(o, tones ? tones[edge[i] <= outer ? 0 : 1] : shaded, oa);
    else put(o, color, a);
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;

// The i-th of any number of distinct colours (prefill proposals): hues a golden angle apart,
// saturated and mid-light, as [r, g, b].
export function distinctColor(i) {
  const h = (i * 137.508) % 360, s = 0.85, l = 0.55;
  const k = (n) => (n + h / 30) % 12, a = s * Math.min(l, 1 - l);
  const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
  return [Math.round(255 * f(0)), Math.round(255 * f(8)), Math.round(255 * f(4))];
}

export function drawMarker(ctx, x, y, label, style, height, width) {
  const r = scaled(style.marker_radius, height, width, 4);
  const w = Math.max(1, Math.floor(r / 3));
  ctx.save();
  ctx.lineWidth = w;
  ctx.strokeStyle = rgb(style.marker_edge);
  ctx.beginPath();
  if (label === 1) {  // foreground: disc with a plus
    ctx.fillStyle = rgb(style.foreground.color);
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    const d = r * 0.55;
    ctx.beginPath();
    ctx.moveTo(x - d, y); ctx.lineTo(x + d, y);
    ctx.moveTo(x, y - d); ctx.lineTo(x, y + d);
    ctx.stroke();
  } else {  // background: square with a cross
    ctx.fillStyle = rgb(style.background.color);
    ctx.rect(x - r, y - r, 2 * r, 2 * r);
    ctx.fill();
    ctx.stroke();
    const d = r * 0.5;
    ctx.beginPath();
    ctx.moveTo(x - d, y - d); ctx.lineTo(x + d, y + d);
    ctx.moveTo(x - d, y + d); ctx.lineTo(x + d, y - d);
    ctx.stroke();
  }
  ctx.restore();
}

export function drawBox(ctx, box, style, height, width, dashed = false) {
  ctx.save();
  ctx.lineWidth = scaled(style.outline_width, height, width, 1);
  ctx.strokeStyle = rgb(style.box_color);
  if (dashed) ctx.setLineDash([6, 4]);
  ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  ctx.restore();
}

export { rgb };
