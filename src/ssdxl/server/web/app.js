// The ssdxl page: a client of the jobs API (/v2), nothing more.
"use strict";

const $ = (id) => document.getElementById(id);
const LORA_WEIGHT = { min: -1, max: 2, step: 0.05 }; // the picker's range; the API takes -10..10
const SIDES = ["left", "top", "right", "bottom"]; // outpaint
let following = null; // { job id, EventSource } while a job is followed
let fastDecodeModels = new Set(); // the models with a tiny VAE, which may decode fast

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json();
  // every error carries error.message; a 422's detail is a list of {loc, msg, type}
  if (!response.ok) throw new Error(body.error?.message || body.detail || response.statusText);
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

async function loadModels() {
  const info = await api("/v2/models");
  for (const name of info.models) {
    const family = (info.families || {})[name];
    $("model").add(new Option(family ? `${name} (${family})` : name, name, false, name === info.default));
  }
  fastDecodeModels = new Set(info.fast_decode || []);
  showFastDecode();
  for (const name of info.schedulers) $("scheduler").add(new Option(name, name));
  const limits = info.limits; // the server's request limits: the inputs refuse what it would
  for (const id of ["width", "height"]) Object.assign($(id), { min: limits.min_side, max: limits.max_side });
  $("steps").max = $("hires-steps").max = limits.max_steps;
  $("prompt").maxLength = $("negative").maxLength = limits.max_prompt_chars;
}

// The fast-decode box, for the chosen model only where it has a tiny VAE (the server refuses it elsewhere).
function showFastDecode() {
  const usable = fastDecodeModels.has($("model").value);
  $("fast-decode-label").hidden = !usable;
  if (!usable) $("fast-decode").checked = false;
}

// Prompt styles: each option's tooltip shows the template the prompt goes into.
async function loadStyles() {
  for (const style of await api("/v2/styles")) {
    const option = new Option(style.name, style.name);
    option.title = style.negative_prompt ? `${style.prompt}\nnegative: ${style.negative_prompt}` : style.prompt;
    $("style").add(option);
  }
}

async function loadAdapters() {
  const [loras, embeddings] = await Promise.all([api("/v2/loras"), api("/v2/embeddings")]);
  const usable = loras.filter((lora) => !lora.error);
  for (const lora of usable) {
    const notes = [lora.few_step, lora.base_model].filter(Boolean).join(", ");
    $("lora-choice").add(new Option(notes ? `${lora.name} (${notes})` : lora.name, lora.name));
  }
  for (const embedding of embeddings.filter((e) => !e.error)) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.textContent = embedding.name;
    chip.title = `${embedding.vectors} vector(s): click to add to the prompt`;
    chip.addEventListener("click", () => appendWord($("prompt"), embedding.name));
    $("embeddings").append(chip);
  }
  $("lora-picker").hidden = usable.length === 0;
  $("embeddings-hint").hidden = $("embeddings").childElementCount === 0;
  $("adapters").hidden = $("lora-picker").hidden && $("embeddings-hint").hidden;
}

function addOptions(parent, names) {
  for (const name of names) parent.append(new Option(name, name));
}

async function loadTools() {
  const [controlnets, modules, ipAdapters, upscalers] = await Promise.all([
    api("/v2/controlnets"),
    api("/controlnet/module_list"),
    api("/v2/ip-adapters"),
    api("/v2/upscalers"),
  ]);
  const usable = (facts) => facts.filter((fact) => !fact.error).map((fact) => fact.name);
  addOptions($("control-model"), usable(controlnets));
  // IP-Adapter modules are the image prompt's, not a control map's
  addOptions($("control-preprocessor"), modules.module_list.filter((name) => !name.startsWith("ip-adapter")));
  addOptions($("ip-model"), usable(ipAdapters));
  $("control-section").hidden = $("control-model").options.length === 1;
  $("ip-section").hidden = $("ip-model").options.length === 1;
  const groups = { Latent: upscalers.latent_modes, Upscalers: upscalers.upscalers.map((u) => u.name) };
  for (const [label, names] of Object.entries(groups)) {
    const group = document.createElement("optgroup");
    group.label = label;
    addOptions(group, names);
    $("hires-upscaler").append(group);
  }
}

function readFile(id) {
  const file = $(id).files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data URL, which the API takes as it is
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// The control unit, image prompt, hires pass and outpaint the form asks for, as /v2/jobs fields; a missing
// picture is left for the server to name in its 422.
async function toolFields() {
  const files = ["control-image", "ip-image", "outpaint-image"];
  const [controlImage, ipImage, grownImage] = await Promise.all(files.map(readFile));
  const fields = {};
  if ($("control-model").value) {
    fields.controls = [{
      model: $("control-model").value,
      image: controlImage ?? undefined,
      preprocessor: $("control-preprocessor").value,
      scale: Number($("control-scale").value),
      start: Number($("control-start").value),
      end: Number($("control-end").value),
    }];
  }
  if ($("ip-model").value) {
    const images = ipImage ? [ipImage] : [];
    fields.image_prompts = [{ model: $("ip-model").value, images, scale: Number($("ip-scale").value) }];
  }
  if ($("hires").checked) {
    fields.hires = {
      scale: Number($("hires-scale").value),
      upscaler: $("hires-upscaler").value,
      steps: Number($("hires-steps").value) || 0,
      strength: Number($("hires-strength").value),
    };
  }
  const sides = Object.fromEntries(SIDES.map((side) => [side, Number($(`outpaint-${side}`).value) || 0]));
  if (grownImage || Object.values(sides).some(Boolean)) {
    Object.assign(fields, { init_image: grownImage, outpaint: sides });
  }
  return fields;
}

function appendWord(textarea, word) {
  const text = textarea.value.trimEnd();
  textarea.value = text ? `${text}, ${word}` : word;
  textarea.focus();
}

function weightInput(type, value, label) {
  const input = document.createElement("input");
  Object.assign(input, { type, ...LORA_WEIGHT, value }); // the range before the value, which it clamps
  input.setAttribute("aria-label", label);
  return input;
}

function addLora(name, weight = 1) {
  if (!name || [...$("loras").children].some((item) => item.dataset.name === name)) return;
  const item = document.createElement("li");
  item.dataset.name = name;
  const label = document.createElement("span");
  label.className = "lora-name";
  label.textContent = name;
  label.title = name;
  const slider = weightInput("range", weight, `${name} weight (slider)`);
  const number = weightInput("number", weight, `${name} weight`);
  slider.addEventListener("input", () => (number.value = slider.value));
  number.addEventListener("input", () => (slider.value = number.value));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.setAttribute("aria-label", `remove ${name}`);
  remove.addEventListener("click", () => item.remove());
  item.append(label, slider, number, remove);
  $("loras").append(item);
}

function chosenLoras() {
  return [...$("loras").children].map((item) => ({
    name: item.dataset.name,
    weight: Number(item.querySelector("input[type=number]").value),
  }));
}

function addToGallery(job, atStart = true) {
  for (const image of job.images) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = job.params.prompt;
    const caption = document.createElement("figcaption");
    caption.textContent = image.infotext;
    figure.append(img, caption);
    if (atStart) $("gallery").prepend(figure);
    else $("gallery").append(figure);
  }
}

async function loadGallery() {
  const jobs = await api("/v2/jobs?limit=24");
  for (const job of jobs) if (job.status === "succeeded") addToGallery(job, false);
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").hidden = !busy;
  $("progress").hidden = !busy;
}

function showProgress(event) {
  if (event.status === "queued") {
    $("status").textContent = event.position ? `queued, ${event.position} ahead` : "starting";
    $("bar").removeAttribute("value");
    return;
  }
  $("bar").value = event.total ? event.step / event.total : 0;
  $("status").textContent = event.total ? `step ${event.step} of ${event.total}` : "running";
  if (event.preview) {
    $("preview").src = event.preview;
    $("preview").hidden = false;
  }
}

function follow(job) {
  const events = new EventSource(`/v2/jobs/${job.id}/events`);
  following = { id: job.id, events };
  events.addEventListener("progress", (e) => showProgress(JSON.parse(e.data)));
  events.addEventListener("done", (e) => {
    events.close();
    following = null;
    const done = JSON.parse(e.data);
    setBusy(false);
    if (done.status === "succeeded") addToGallery(done);
    else showError(done.error || `job ${done.status}`);
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) {
      following = null;
      setBusy(false);
      showError("lost the connection to the server");
    }
  };
}

async function generate(event) {
  event.preventDefault();
  showError("");
  setBusy(true);
  $("preview").hidden = true;
  const fields = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    model: $("model").value || null,
    scheduler: $("scheduler").value || null,
    width: numberOrNull("width"),
    height: numberOrNull("height"),
    steps: numberOrNull("steps"),
    guidance_scale: numberOrNull("guidance"),
    seed: numberOrNull("seed") ?? -1,
    loras: chosenLoras(),
    styles: $("style").value ? [$("style").value] : [],
    fast_decode: $("fast-decode").checked,
  };
  try {
    const body = { ...fields, ...(await toolFields()) };
    const job = await api("/v2/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    follow(job);
  } catch (error) {
    setBusy(false);
    showError(error.message);
  }
}

async function cancel() {
  if (following) await api(`/v2/jobs/${following.id}`, { method: "DELETE" });
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("lora-add").addEventListener("click", () => addLora($("lora-choice").value));
$("model").addEventListener("change", showFastDecode);
for (const id of ["control-scale", "ip-scale"]) {
  $(id).addEventListener("input", () => ($(`${id}-value`).value = $(id).value));
}
Promise.all([loadModels(), loadStyles(), loadAdapters(), loadTools(), loadGallery()]).catch((error) =>
  showError(error.message)
);
