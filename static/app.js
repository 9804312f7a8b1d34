// Upload page: pick or drop a file, preview it, POST it to /predict, show bars and Grad-CAM.
// No framework, no CDN: works offline.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return; // no model: the page only explains how to get one
  const input = document.getElementById("file-input");
  const zone = document.getElementById("drop-zone");
  const submit = document.getElementById("submit");
  const explain = document.getElementById("explain");
  const error = pageFetch.errorBox(document.getElementById("error"));
  const preview = document.getElementById("preview");
  const previewImg = document.getElementById("preview-img");
  const previewCaption = document.getElementById("preview-caption");
  const result = document.getElementById("result");
  const label = document.getElementById("label");
  const labelLine = document.getElementById("label-line");
  const labelPrefix = document.getElementById("label-prefix");
  const oodWarning = document.getElementById("ood-warning");
  const oodDetail = document.getElementById("ood-detail");
  const bars = document.getElementById("bars");
  const gradcam = document.getElementById("gradcam");
  const gradcamImg = document.getElementById("gradcam-img");
  // class name -> how the page shows it (serving.class_names); the API answers with class names
  const classNames = JSON.parse(form.dataset.classNames || "{}");
  let file = null;
  let previewUrl = null;
  let pending = 0; // the latest request's number: the answer to an older one (another file) is dropped

  function shown(name) {
    return classNames[name] || name;
  }

  function choose(selected) {
    pending += 1; // a request still on its way was for the previous file
    error.clear();
    result.hidden = true;
    file = selected || null;
    submit.disabled = !file;
    submit.textContent = "Classify";
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    if (!file) {
      preview.hidden = true;
      return;
    }
    const isBrowserImage = /^image\/(png|jpeg)$/.test(file.type);
    if (isBrowserImage) {
      previewUrl = URL.createObjectURL(file);
      previewImg.src = previewUrl;
      previewImg.hidden = false;
      previewCaption.textContent = file.name;
    } else {
      previewImg.removeAttribute("src");
      previewImg.hidden = true;
      previewCaption.textContent = file.name + " (no browser preview; the Grad-CAM view shows the image as the model saw it)";
    }
    preview.hidden = false;
  }

  input.addEventListener("change", function () {
    choose(input.files && input.files[0]);
  });

  // The label opens the picker on click; make Enter and Space do the same from the keyboard.
  zone.addEventListener("keydown", function (event) {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });

  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.remove("dragging");
    });
  });
  zone.addEventListener("drop", function (event) {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) choose(files[0]);
  });

  // in_distribution false: the upload is unlike the training images, so the label is shown as
  // unreliable under a warning; null: this model has no out-of-distribution check.
  function renderOod(body) {
    const outside = body.in_distribution === false;
    oodWarning.hidden = !outside;
    oodDetail.textContent = outside && typeof body.ood_score === "number"
      ? " Distance from the training images: " + body.ood_score.toFixed(2) + " × the threshold."
      : "";
    result.classList.toggle("unreliable", outside);
    labelLine.classList.toggle("unreliable", outside);
    labelPrefix.textContent = outside ? "Label (unreliable):" : "Result:";
  }

  function render(body) {
    renderOod(body);
    label.textContent = shown(body.label);
    probabilityBars.render(
      bars,
      Object.entries(body.probabilities)
        .sort(function (a, b) { return b[1] - a[1]; })
        .map(function (entry) { return [shown(entry[0]), entry[1]]; }),
      shown(body.label)
    );
    if (body.gradcam_png) {
      gradcamImg.src = "data:image/png;base64," + body.gradcam_png;
      gradcam.hidden = false;
    } else {
      gradcam.hidden = true;
    }
    result.hidden = false;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (!file) return;
    error.clear();
    const request = ++pending;
    submit.disabled = true;
    submit.textContent = "Classifying…";
    const data = new FormData();
    data.append("file", file);
    try {
      const url = form.action + (explain.checked ? "?explain=1" : "");
      const body = await pageFetch.json(url, { method: "POST", body: data });
      if (request === pending) render(body);
    } catch (failure) {
      if (request === pending) {
        error.show(failure.message);
        result.hidden = true;
      }
    } finally {
      if (request === pending) {
        submit.disabled = !file;
        submit.textContent = "Classify";
      }
    }
  });
})();
