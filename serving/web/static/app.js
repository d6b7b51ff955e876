// Shared by every page: the CSRF token for scripts, problem+json in words, and thumbs feedback.
"use strict";

window.HA = (function () {
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // A problem+json answer's detail, or the status line: words for the person, never a trace.
  function problemText(response) {
    return response.text().then(function (body) {
      try {
        var problem = JSON.parse(body);
        if (problem && problem.detail) { return String(problem.detail); }
      } catch (ignored) { /* not JSON: fall through */ }
      return response.status + " " + response.statusText;
    });
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (whole, name) {
      return Object.prototype.hasOwnProperty.call(values, name) ? String(values[name]) : whole;
    });
  }

  function postJSON(url, payload) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(payload)
    });
  }

  // Thumbs up/down: one click sends one rating, then both buttons rest.
  function wireThumbs(box, url, messageId, thanks) {
    box.querySelectorAll("button[data-up]").forEach(function (button) {
      button.addEventListener("click", function () {
        var status = box.querySelector(".thanks");
        postJSON(url, { message_id: Number(messageId), up: button.getAttribute("data-up") === "1" })
          .then(function (response) {
            if (response.ok) {
              box.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
              button.setAttribute("aria-pressed", "true");
              status.textContent = thanks;
            } else {
              return problemText(response).then(function (text) { status.textContent = text; });
            }
          });
      });
    });
  }

  return { csrf: csrf, problemText: problemText, fill: fill, postJSON: postJSON, wireThumbs: wireThumbs };
})();
