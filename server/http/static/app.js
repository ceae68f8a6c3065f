// The try-it page: plain JavaScript over the server's own KServe v2 REST API.
// A photo travels as one BYTES element in Triton's binary tensor extension and is
// decoded server-side; the answer asks the classification extension for every class
// so that the page can turn the scores into probabilities (softmax) for the top 5.
"use strict";

const $ = (id) => document.getElementById(id);

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function cell(row, text, numeric = false) {
  const td = row.insertCell();
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

const fixed = (value, digits) => (value == null ? "–" : Number(value).toFixed(digits));

async function stats(model) {
  const doc = await getJSON(`/v2/models/${encodeURIComponent(model)}/stats`);
  return doc.model_stats[0];
}

function binaryBody(meta, image, classes) {
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{ name: meta.inputs[0].name, datatype: "BYTES", shape: [1],
               parameters: { binary_data_size: image.length + 4 } }],
    outputs: [{ name: meta.outputs[0].name, parameters: { classification: classes } }],
  }));
  const body = new Uint8Array(header.length + 4 + image.length);
  body.set(header);
  new DataView(body.buffer).setUint32(header.length, image.length, true);
  body.set(image, header.length + 4);
  return { body, headerLength: header.length };
}

function softmaxTop(entries, k) {
  const parsed = entries.map((s) => {
    const [score, index, ...label] = s.split(":");
    return { score: Number(score), index: Number(index), label: label.join(":") || `class ${index}` };
  });
  const top = Math.max(...parsed.map((p) => p.score));
  const weights = parsed.map((p) => Math.exp(p.score - top));
  const total = weights.reduce((a, b) => a + b, 0);
  parsed.forEach((p, i) => { p.probability = weights[i] / total; });
  return parsed.slice(0, k);  // the server already sorted them by score
}

function mean(after, before, key) {
  const count = after[key].count - before[key].count;
  return count > 0 ? (after[key].ns - before[key].ns) / count / 1e6 : null;
}

function showLatency(roundTrip, serverMs, before, after) {
  const executions = after.execution_count - before.execution_count;
  const compute = executions > 0
    ? (after.inference_stats.compute_infer.ns - before.inference_stats.compute_infer.ns) / executions / 1e6
    : null;
  const rows = [
    ["network + browser", serverMs == null ? null : roundTrip - serverMs],
    ["image decode", mean(after.inference_stats, before.inference_stats, "compute_input")],
    ["queue", mean(after.inference_stats, before.inference_stats, "queue")],
    ["compute (batch)", compute],
    ["server total", serverMs],
    ["round trip", roundTrip],
  ];
  const body = $("latency").tBodies[0];
  body.replaceChildren();
  for (const [name, ms] of rows) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, `${fixed(ms, 1)} ms`, true);
  }
}

async function classify(file) {
  const model = $("model").value;
  if (!model || !file) return;
  say(`classifying with ${model}…`);
  try {
    const meta = await getJSON(`/v2/models/${encodeURIComponent(model)}`);
    const classes = meta.outputs[0].shape[meta.outputs[0].shape.length - 1];
    const image = new Uint8Array(await file.arrayBuffer());
    const { body, headerLength } = binaryBody(meta, image, classes);
    const before = await stats(model);
    const started = performance.now();
    const response = await fetch(`/v2/models/${encodeURIComponent(model)}/infer`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream",
                 "Inference-Header-Content-Length": String(headerLength) },
      body,
    });
    const answer = await response.json();
    const roundTrip = performance.now() - started;
    if (!response.ok) throw new Error(answer.error);
    const timing = /dur=([0-9.]+)/.exec(response.headers.get("Server-Timing") || "");
    const top = softmaxTop(answer.outputs[0].data, 5);
    $("preview").src = URL.createObjectURL(file);
    $("top1").textContent = top[0].label;
    const list = $("top5");
    list.replaceChildren();
    for (const entry of top) {
      const item = document.createElement("li");
      item.textContent = `${entry.label}: ${(100 * entry.probability).toFixed(1)}%`;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, 100 * entry.probability)}%`;
      item.append(bar);
      list.append(item);
    }
    showLatency(roundTrip, timing ? Number(timing[1]) : null, before, await stats(model));
    $("answer").hidden = false;
    say(`${model} version ${answer.model_version}: done`);
    loadZoo();
  } catch (error) {
    say(`${model}: ${error.message}`, true);
  }
}

async function loadModels() {
  const index = await getJSON("/v2/repository/index", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: '{"ready": true}',
  });  // a text/plain body (fetch's default for a string) is refused 415
  const select = $("model");
  const names = [...new Set(index.map((m) => m.name))];
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  const preferred = names.find((n) => /efficientnet|mobilenet|resnet/.test(n));
  if (preferred) select.value = preferred;
  describeModel();
}

async function describeModel() {
  const model = $("model").value;
  if (!model) return;
  const meta = await getJSON(`/v2/models/${encodeURIComponent(model)}`);
  const input = meta.inputs[0];
  $("model-info").textContent = `${meta.platform}, versions ${meta.versions.join(", ")}; ` +
    `input ${input.datatype} [${input.shape.join(", ")}] (the server decodes and resizes the photo)`;
}

async function loadZoo() {
  const zoo = await getJSON("/zoo.json");
  const served = await getJSON("/v2/models/stats");
  const byName = new Map(served.model_stats.map((s) => [`${s.name}/${s.version}`, s]));
  const body = $("zoo").tBodies[0];
  body.replaceChildren();
  for (const m of zoo.models) {
    const row = body.insertRow();
    row.dataset.model = m.name;
    const s = byName.get(`${m.name}/${m.version}`);
    const success = s ? s.inference_stats.success : null;
    cell(row, m.name);
    cell(row, m.version || "–");
    cell(row, m.state + (m.reason ? ` (${m.reason})` : ""));
    cell(row, m.params == null ? "–" : fixed(m.params / 1e6, 2), true);
    cell(row, fixed(m.gmacs, 3), true);
    cell(row, m.weights || "–");
    cell(row, fixed(m.benchmark_p50_ms, 2), true);
    cell(row, success && success.count ? fixed(success.ns / success.count / 1e6, 2) : "–", true);
    cell(row, success ? String(success.count) : "0", true);
  }
  const charts = $("charts");
  if (charts.childElementCount === 0) {
    for (const name of zoo.charts) {
      const img = document.createElement("img");
      img.src = `/charts/${encodeURIComponent(name)}`;
      img.alt = `benchmark chart ${name}`;
      img.loading = "lazy";
      charts.append(img);
    }
  }
  document.body.dataset.zooLoaded = "true";
}

function wire() {
  $("model").addEventListener("change", describeModel);
  for (const id of ["file", "camera"]) {
    $(id).addEventListener("change", (e) => classify(e.target.files[0]));
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classify(e.dataTransfer.files[0]);
  });
}

wire();
Promise.all([loadModels(), loadZoo()]).catch((error) => say(error.message, true));
