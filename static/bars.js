// Probability bars shared by the chest CT page (app.js) and the tabular pages (tabular.js).
(function () {
  "use strict";

  function percent(p) {
    return (p * 100).toFixed(1) + "%";
  }

  function span(className, text) {
    const element = document.createElement("span");
    element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  // One <li> per [class, probability] entry, in the given order; the top class is highlighted.
  function renderBars(list, entries, top) {
    list.replaceChildren();
    entries.forEach(function (entry) {
      const row = document.createElement("li");
      row.className = "bar-row" + (entry[0] === top ? " top" : "");
      const track = span("bar-track");
      track.setAttribute("role", "meter");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-valuenow", (entry[1] * 100).toFixed(1));
      track.setAttribute("aria-label", entry[0] + " probability");
      const fill = span("bar-fill");
      fill.style.display = "block";
      fill.style.width = percent(entry[1]);
      track.appendChild(fill);
      row.append(span("bar-name", entry[0]), track, span("bar-value", percent(entry[1])));
      list.appendChild(row);
    });
  }

  window.probabilityBars = { percent: percent, render: renderBars };
})();
