// The viewer: the public API only, no build step, nothing fetched from outside the service.
"use strict";

const INFERNO = ["#000004", "#0b0724", "#210c4a", "#3d0965", "#57106e", "#71196e", "#8a226a",
  "#a32c61", "#bc3754", "#d24644", "#e45a31", "#f1731d", "#f98e09", "#fcac11", "#f9cb35",
  "#f2ea69", "#fcffa4"].map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));

const $ = (id) => document.getElementById(id);
let job = null;
let overlayTimer = null;

function headers() {
  const key = $("key").value.trim();
  sessionStorage.setItem("krypton-key", key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...options.headers } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

function say(text) { $("message").textContent = text; }

async function loadCatalog() {
  try {
    const models = await (await api("/v1/models")).json();
    $("model").replaceChildren(...models.map((m) => new Option(
      `${m.name}${m.random_weights ? " (untrained)" : ""}`, m.name)));
    const datasets = await (await api("/v1/datasets")).json();
    $("dataset").replaceChildren(new Option("none", ""), ...datasets.map((d) => new Option(
      `${d.name}${d.tuned ? " (tuned)" : ""}`, d.name)));
    say("");
  } catch (error) {
    say(`Models could not be listed (${error.message}); an API key may be needed.`);
  }
}

function colour(value) {
  const position = Math.min(Math.max(value, 0), 1) * (INFERNO.length - 1);
  const low = Math.floor(position);
  const high = Math.min(low + 1, INFERNO.length - 1);
  const t = position - low;
  return INFERNO[low].map((c, i) => Math.round(c + (INFERNO[high][i] - c) * t));
}

function drawPartial(data) {
  const [rows, cols] = data.shape;
  const values = data.heatmap.flat().filter((v) => v !== null);
  if (!values.length) return;
  // The drop from the unoccluded probability, as the final picture shows it.
  const top = Math.max(...values);
  const drops = values.map((v) => top - v);
  const high = Math.max(...drops) || 1;
  const canvas = $("partial");
  canvas.width = cols;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(cols, rows);
  data.heatmap.forEach((row, r) => row.forEach((value, c) => {
    const at = 4 * (r * cols + c);
    if (value === null) { pixels.data[at + 3] = 0; return; }
    const [red, green, blue] = colour((top - value) / high);
    pixels.data.set([red, green, blue, 255], at);
  }));
  context.putImageData(pixels, 0, 0);
  canvas.hidden = false;
}

async function showOverlay() {
  const alpha = $("opacity").value;
  const blob = await (await api(`${job.links.overlay_png}&alpha=${alpha}`)).blob();
  const image = $("overlay");
  const old = image.src;
  image.src = URL.createObjectURL(blob);
  if (old) URL.revokeObjectURL(old);
  image.hidden = false;
  $("partial").hidden = true;
}

async function showResult(finished) {
  job = finished;
  const p = finished.prediction;
  $("prediction").textContent = `Predicted ${p.predicted_label} ` +
    `(class ${p.predicted_class}, p = ${p.predicted_probability.toFixed(3)}); ` +
    `explaining ${p.target_label} (p = ${p.target_probability.toFixed(3)}).`;
  const heatmap = await (await api(`${finished.links.json}?view=drop`)).json();
  $("low").textContent = heatmap.min.toFixed(3);
  $("high").textContent = heatmap.max.toFixed(3);
  for (const format of ["dcm", "overlay_dcm"]) {  // offered where the job links them
    document.querySelector(`[data-format="${format}"]`).hidden = !(format in finished.links);
  }
  await showOverlay();
  document.querySelectorAll("#downloads button").forEach((b) => { b.disabled = false; });
  $("result").dataset.done = "true";
}

async function follow(id) {
  const response = await api(`/v1/heatmaps/${id}/events`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: ?(.*)$/m) || [])[1];
      const data = JSON.parse(block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n"));
      if (name === "progress") {
        $("status").textContent = data.status;
        $("progress").value = data.progress;
      } else if (name === "partial") {
        drawPartial(data);
      } else if (name === "succeeded") {
        $("status").textContent = "succeeded";
        $("progress").value = 1;
        await showResult(data);
        return;
      } else if (name === "failed") {
        $("status").textContent = "failed";
        say(data.error ? data.error.detail : "the job failed");
        return;
      }
    }
  }
}

async function explain(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("image", $("image").files[0]);
  for (const field of ["model", "dataset", "mode", "patch_size", "stride", "frame"]) {
    if ($(field).value) form.append(field, $(field).value);
  }
  $("explain").disabled = true;
  delete $("result").dataset.done;
  job = null;  // nothing of the last job stays on screen
  $("overlay").hidden = true;
  $("partial").hidden = true;
  $("prediction").textContent = "";
  $("low").textContent = $("high").textContent = "";
  document.querySelectorAll("#downloads button").forEach((b) => { b.disabled = true; });
  say("");
  try {
    const submitted = await (await api("/v1/heatmaps", { method: "POST", body: form })).json();
    $("result").hidden = false;
    $("job-id").textContent = submitted.id;
    $("warning").hidden = !submitted.random_weights;
    await follow(submitted.id);
  } catch (error) {
    say(error.message);
  } finally {
    $("explain").disabled = false;
  }
}

async function download(format) {
  const links = { png: "png", overlay: "overlay_png", json: "json", dcm: "dcm",
    overlay_dcm: "overlay_dcm" };
  const names = { png: "heatmap.png", overlay: "overlay.png", json: "heatmap.json",
    dcm: "heatmap.dcm", overlay_dcm: "overlay.dcm" };
  const blob = await (await api(job.links[links[format]])).blob();
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(blob), download: `${job.id}-${names[format]}` });
  link.click();
  URL.revokeObjectURL(link.href);
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem("krypton-key") || "";
  $("key").addEventListener("change", loadCatalog);
  $("request").addEventListener("submit", explain);
  $("opacity").addEventListener("input", () => {
    if (!job) return;
    clearTimeout(overlayTimer);
    overlayTimer = setTimeout(() => showOverlay().catch((e) => say(e.message)), 150);
  });
  document.querySelectorAll("#downloads button").forEach((button) =>
    button.addEventListener("click", () => download(button.dataset.format).catch((e) => say(e.message))));
  loadCatalog();
});
