"use strict";
// Progress comes from GET /v1/jobs/{id}/events read with fetch() and a stream reader, because EventSource cannot
// send the Authorization header and the bridge never accepts tokens in URLs.
let token = null;
let currentJob = null;
let models = [];
// Named adapters live workers hold (GET /v1/adapters), and the ones chosen for the next job, in order.
let namedAdapters = [];
let chosenAdapters = [];
// The contract's default strength per mode: img2img keeps most of the init image, inpaint repaints the masked part.
const DEFAULT_STRENGTH = { img2img: "0.75", inpaint: "1" };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, token ? { Authorization: "Bearer " + token } : {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let message = response.status + "";
    try { const body = await response.json(); message = body.error.code + ": " + body.error.message; } catch (e) {}
    throw new Error(message);
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new URLSearchParams({ username: $("username").value, password: $("password").value });
  try {
    const response = await api("/token", { method: "POST", body: form });
    token = (await response.json()).access_token;
    $("whoami").textContent = "signed in as " + $("username").value;
    $("job-form").hidden = false;
    $("history").hidden = false;
    await Promise.all([loadModels(), loadAdapters(), loadHistory()]);
  } catch (error) {
    $("whoami").textContent = "sign-in failed: " + error.message;
    $("whoami").className = "error";
  }
});

function numberOrNull(id) { const value = $(id).value; return value === "" ? null : Number(value); }

// The models live workers announce; choosing one fills the size, guidance and schedulers its family suggests.
async function loadModels() {
  try {
    models = (await (await api("/v1/models")).json()).models;
  } catch (error) {
    setStatus("could not list the models: " + error.message, true);
    return;
  }
  const options = models.map((model) => {
    const family = model.family ? model.family + ", " : "";
    return new Option(model.alias + " (" + family + model.workers + " worker" + (model.workers === 1 ? ")" : "s)"), model.alias);
  });
  if (options.length > 0) $("model").replaceChildren(...options);
  const preferred = models.find((model) => model.alias === "default") || models[0];
  if (preferred) $("model").value = preferred.alias;
  onModelChosen();
}

function onModelChosen() {
  const model = models.find((candidate) => candidate.alias === $("model").value);
  const names = model && model.schedulers ? model.schedulers : [];
  $("scheduler").replaceChildren(new Option("the model's own", ""), ...names.map((name) => new Option(name, name)));
  if (model && model.defaults) {
    $("width").value = model.defaults.width;
    $("height").value = model.defaults.height;
    $("guidance").value = model.defaults.guidance_scale;
  }
  showNamedAdapters();
}

async function loadAdapters() {
  try {
    namedAdapters = (await (await api("/v1/adapters")).json()).adapters;
  } catch (error) {
    setStatus("could not list the adapters: " + error.message, true);
    return;
  }
  showNamedAdapters();
}

// Only the adapters held by workers of the chosen model: a job lands on one of those.
function showNamedAdapters() {
  const held = namedAdapters.filter((adapter) => adapter.models.includes($("model").value));
  const options = held.map((adapter) => new Option(adapter.name + " (" + adapter.kind + ")", adapter.name));
  $("adapter-name").replaceChildren(new Option(held.length ? "choose…" : "none held", ""), ...options);
}

function addAdapter() {
  const name = $("adapter-name").value;
  const key = $("adapter-key").value.trim();
  if (!name === !key) { setStatus("choose a named adapter or type a key, not both", true); return; }
  const named = namedAdapters.find((adapter) => adapter.name === name);
  const token = $("adapter-token").value.trim();
  const adapter = name ? { name } : { key };
  if (named ? named.kind === "embedding" : token) { adapter.kind = "embedding"; adapter.token = token; }
  else adapter.scale = Number($("adapter-scale").value);
  chosenAdapters.push(adapter);
  $("adapter-key").value = "";
  showChosenAdapters();
}

function showChosenAdapters() {
  const items = chosenAdapters.map((adapter, index) => {
    const li = document.createElement("li");
    const what = adapter.token ? " binds " + adapter.token : " at " + adapter.scale;
    li.textContent = (adapter.name || adapter.key) + what + " ";
    const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "remove" });
    remove.addEventListener("click", () => { chosenAdapters.splice(index, 1); showChosenAdapters(); });
    li.append(remove);
    return li;
  });
  $("adapters").replaceChildren(...items);
}

$("adapter-add").addEventListener("click", addAdapter);

function onModeChosen() {
  const mode = $("mode").value;
  $("image-fields").hidden = mode === "txt2img";
  $("mask-fields").hidden = mode !== "inpaint";
  $("init").required = mode !== "txt2img";
  $("mask").required = mode === "inpaint";
  if (mode in DEFAULT_STRENGTH) $("strength").value = DEFAULT_STRENGTH[mode];
}

$("model").addEventListener("change", onModelChosen);
$("mode").addEventListener("change", onModeChosen);

async function submitJob() {
  const mode = $("mode").value;
  const params = {
    model: $("model").value, prompt: $("prompt").value, negative_prompt: $("negative").value,
    width: numberOrNull("width"), height: numberOrNull("height"), steps: numberOrNull("steps"),
    guidance_scale: numberOrNull("guidance"), seed: numberOrNull("seed"),
    scheduler: $("scheduler").value || null, previews: true,
  };
  if (mode === "txt2img") {
    return api("/v1/txt2img", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign(params, { adapters: chosenAdapters })),
    });
  }
  const form = new FormData();
  for (const [key, value] of Object.entries(params)) { if (value !== null) form.append(key, value); }
  // A form field is text: the adapter list travels as JSON.
  if (chosenAdapters.length > 0) form.append("adapters", JSON.stringify(chosenAdapters));
  form.append("strength", $("strength").value);
  form.append("image", $("init").files[0]);
  if (mode === "img2img") return api("/v1/img2img", { method: "POST", body: form });
  form.append("mask_blur", $("mask-blur").value);
  form.append("mask", $("mask").files[0]);
  return api("/v1/inpaint", { method: "POST", body: form });
}

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("run").hidden = false;
  $("result").innerHTML = "";
  $("progress").value = 0;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  try {
    const accepted = await (await submitJob()).json();
    currentJob = accepted.job_id;
    $("cancel").hidden = false;
    setStatus("queued " + currentJob);
    await follow(currentJob);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    $("cancel").hidden = true;
    await loadHistory();
  }
});

$("cancel").addEventListener("click", async () => {
  if (!currentJob) return;
  try { await api("/v1/jobs/" + currentJob + "/cancel", { method: "POST" }); setStatus("cancelling…"); }
  catch (error) { setStatus(error.message, true); }
});

async function follow(jobId) {
  const response = await api("/v1/jobs/" + jobId + "/events");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split("\n").filter((line) => line.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

function onEvent(event) {
  if (event.type === "started") setStatus("running");
  if (event.type === "progress") {
    // Attributes rather than properties, so observers (and the browser test) see each step.
    $("progress").setAttribute("max", event.steps);
    $("progress").setAttribute("value", event.step);
    setStatus("step " + event.step + " / " + event.steps);
    if (event.preview) showPreview(event.preview);
  }
  if (event.type === "succeeded") showResult(event);
  if (event.type === "failed" || event.type === "cancelled") setStatus(event.type + ": " + event.error.message, true);
}

// Image URLs come from the bridge, signed from the record's keys; anything but http(s) is never linked.
function safeUrl(url) { return /^https?:\/\//i.test(url) ? url : "about:blank"; }

// A preview becomes a data: URL only as WebP and only from base64 characters, so nothing else can reach `src`.
function previewUrl(preview) {
  if (preview.content_type !== "image/webp" || !/^[A-Za-z0-9+/]+={0,2}$/.test(preview.data)) return null;
  return "data:image/webp;base64," + preview.data;
}

function showPreview(preview) {
  const url = previewUrl(preview);
  if (url === null) return;
  $("preview").src = url;
  $("preview").title = "preview " + preview.width + "×" + preview.height;
  $("preview").hidden = false;
}

function showResult(event) {
  $("progress").value = $("progress").max;
  $("preview").hidden = true;
  setStatus("done in " + (event.timings.total || 0).toFixed(2) + " s");
  const result = $("result");
  result.innerHTML = "";
  for (const image of event.images) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = safeUrl(image.url);
    img.alt = "generated image " + image.index;
    img.id = "image-" + image.index;
    const caption = document.createElement("figcaption");
    caption.append("seed " + image.seed + " · " + image.width + "×" + image.height + " · ");
    const link = document.createElement("a");
    link.href = safeUrl(image.url);
    link.download = event.job_id + "-" + image.index;
    link.textContent = "download";
    link.className = "download";
    caption.append(link);
    figure.append(img, caption);
    result.append(figure);
  }
}

async function loadHistory() {
  try {
    const list = await (await api("/v1/jobs?limit=10")).json();
    const items = list.jobs.map((job) => {
      const li = document.createElement("li");
      li.textContent = job.created_at.slice(0, 19).replace("T", " ") + " · " + job.status + " · " + job.prompt;
      const images = job.result && job.result.images ? job.result.images : [];
      for (const image of images) {
        const link = document.createElement("a");
        link.href = safeUrl(image.url);
        link.textContent = " [image " + image.index + ", seed " + image.seed + "]";
        li.append(link);
      }
      return li;
    });
    $("jobs").replaceChildren(...items);
  } catch (error) {
    $("jobs").replaceChildren(Object.assign(document.createElement("li"), { textContent: error.message }));
  }
}
