// One way for the pages to call the JSON API: send the request, parse the reply, and turn every
// failure (no network, a non-2xx reply with or without {"error": ...}, a reply that is not JSON)
// into one Error whose message can be shown as it is.
(function () {
  "use strict";

  // A failed reply without {"error": ...} (a proxy's HTML page, or no body): what its status means.
  const STATUS_MESSAGES = {
    408: "The server stopped waiting for the request; try again.",
    413: "The file is too large for the server.",
    429: "Too many requests; wait a moment and try again.",
    502: "The server is unavailable; try again in a moment.",
    503: "The server is unavailable; try again in a moment.",
    504: "The server took too long to answer; try again in a moment.",
  };

  // The longest wait for a reply: an upload may take config.yaml's body_deadline_seconds (90) and
  // predict_wait_seconds (60) before the prediction itself; past this the page says so, never spins.
  const TIMEOUT_SECONDS = 180;

  function statusMessage(status) {
    return (STATUS_MESSAGES[status] || "The server could not answer.") + " (HTTP " + status + ")";
  }

  // options: fetch's, plus timeoutSeconds (default TIMEOUT_SECONDS) for the whole reply.
  async function fetchJson(url, options) {
    const { timeoutSeconds = TIMEOUT_SECONDS, ...init } = options || {};
    init.headers = Object.assign({ Accept: "application/json" }, init.headers);
    init.signal = AbortSignal.timeout(timeoutSeconds * 1000);
    const timedOut = (error) => error.name === "TimeoutError";
    const noAnswer = new Error("The server did not answer within " + timeoutSeconds + " s; try again.");
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw timedOut(error) ? noAnswer : new Error("Could not reach the server: " + error.message);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      if (timedOut(error)) throw noAnswer;
      body = null; // e.g. a proxy's HTML error page
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" && body.error;
      throw new Error(message || statusMessage(response.status));
    }
    if (body === null) throw new Error("The server's reply was not JSON (status " + response.status + ").");
    return body;
  }

  // The page's error box (role="alert"): show one message, or hide it.
  function errorBox(element) {
    return {
      show: function (message) {
        element.textContent = message;
        element.hidden = false;
      },
      clear: function () {
        element.hidden = true;
        element.textContent = "";
      },
    };
  }

  window.pageFetch = { json: fetchJson, errorBox: errorBox };
})();
