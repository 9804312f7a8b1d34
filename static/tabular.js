// Tabular task page: check the form in the browser (ranges, whole numbers, categories), POST one
// record as JSON to /predict/<task>, show the label, its probability and the model version.
// The server checks everything again and answers 400 naming the field; that message is shown too.
(function () {
  "use strict";
  const form = document.getElementById("tabular-form");
  if (!form) return; // no model: the page only says why
  const submit = document.getElementById("submit");
  const error = pageFetch.errorBox(document.getElementById("error"));
  const result = document.getElementById("result");
  const label = document.getElementById("label");
  const probability = document.getElementById("probability");
  const bars = document.getElementById("bars");
  const answeredBy = document.getElementById("answered-by");
  const fields = Array.from(form.querySelectorAll("input, select"));

  function showError(message) {
    error.show(message);
    result.hidden = true;
  }

  const percent = probabilityBars.percent;

  // The first field the browser's constraints reject, with a message naming it.
  function firstInvalid() {
    for (const field of fields) {
      field.classList.toggle("invalid", !field.checkValidity());
    }
    const bad = fields.find(function (field) { return !field.checkValidity(); });
    if (!bad) return null;
    return { field: bad, message: "Field '" + bad.name + "': " + bad.validationMessage };
  }

  function record() {
    const values = {};
    fields.forEach(function (field) {
      values[field.name] = field.type === "number" ? Number(field.value) : field.value;
    });
    return values;
  }

  function render(body) {
    const prediction = body.predictions[0];
    label.textContent = prediction.label;
    probability.textContent = "(probability " + percent(prediction.probability) + ")";
    probabilityBars.render(bars, Object.entries(prediction.probabilities), prediction.label);
    answeredBy.textContent = body.model.name + " version " + body.model.version + " (" + body.kind + ")";
    error.clear();
    result.hidden = false;
  }

  fields.forEach(function (field) {
    field.addEventListener("input", function () { field.classList.remove("invalid"); });
  });

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const invalid = firstInvalid();
    if (invalid) {
      showError(invalid.message);
      invalid.field.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Predicting…";
    try {
      render(await pageFetch.json(form.dataset.action, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ records: [record()] }),
      }));
    } catch (failure) {
      showError(failure.message);
    } finally {
      submit.disabled = false;
      submit.textContent = "Predict";
    }
  });
})();
