// The page talks to the same service: GET /metadata once, POST /predict per chosen image.
"use strict";

const TOP_CLASSES = 5;
const dropZone = document.getElementById("drop-zone");
const fileInput = document.getElementById("file-input");
const errorBox = document.getElementById("error");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

async function loadMetadata() {
  const response = await fetch("/metadata");
  if (!response.ok) {
    showError(`GET /metadata failed with status ${response.status}`);
    return;
  }
  const metadata = await response.json();
  document.getElementById("model-summary").textContent =
    `${metadata.backbone} classifier over ${metadata.classes.length} classes, ` +
    `${metadata.image_size}×${metadata.image_size} input (${metadata.model})`;

  const list = document.getElementById("metadata");
  for (const [key, value] of Object.entries(metadata)) {
    const term = document.createElement("dt");
    term.textContent = key;
    const description = document.createElement("dd");
    description.textContent = Array.isArray(value) ? value.join(", ") : String(value);
    list.append(term, description);
  }
}

async function classify(file) {
  errorBox.hidden = true;
  document.getElementById("preview").src = URL.createObjectURL(file);

  const form = new FormData();
  form.append("file", file);
  const response = await fetch(`/predict?top=${TOP_CLASSES}`, { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    document.getElementById("result").hidden = true;
    showError(`${response.status}: ${body.detail || response.statusText}`);
    return;
  }

  const prediction = body.predictions[0];
  const list = document.getElementById("predictions");
  list.replaceChildren();
  for (const { class: name, probability } of prediction.top) {
    const item = document.createElement("li");
    item.className = "prediction";
    item.dataset.class = name;
    item.innerHTML = `<span class="name"></span><span class="probability"></span><div class="bar"></div>`;
    item.querySelector(".name").textContent = name;
    item.querySelector(".probability").textContent = `${(probability * 100).toFixed(1)} %`;
    item.querySelector(".bar").style.width = `${Math.max(probability * 100, 0.5)}%`;
    list.append(item);
  }
  document.getElementById("result-title").textContent = `Top classes for ${file.name}`;
  document.getElementById("result").hidden = false;
}

fileInput.addEventListener("change", () => {
  if (fileInput.files.length > 0) classify(fileInput.files[0]);
});
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  if (event.dataTransfer.files.length > 0) classify(event.dataTransfer.files[0]);
});

loadMetadata().catch((error) => showError(`cannot reach the service: ${error}`));
