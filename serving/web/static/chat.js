// The patient's chat: send a message (with an optional picture or DICOM file) and show the answer's
// tokens as the server streams them (Server-Sent Events over a POST, read from the response body).
"use strict";

(function () {
  var form = document.getElementById("chat-form");
  var list = document.getElementById("messages");
  var words = document.getElementById("chat-words").dataset;
  var feedbackUrl = form ? form.dataset.feedback : "";

  document.querySelectorAll(".thumbs[data-message]").forEach(function (box) {
    HA.wireThumbs(box, feedbackUrl, box.dataset.message, words.thanks);
  });
  if (!form) { return; }

  var input = document.getElementById("chat-input");
  var file = document.getElementById("chat-file");
  var preview = document.getElementById("preview");
  var previewImg = document.getElementById("preview-img");
  var caption = document.getElementById("preview-caption");
  var errorBox = document.getElementById("chat-error");
  var send = form.querySelector('button[type="submit"]');
  var previewUrl = null;
  var bannerFocused = false;  // an emergency banner keeps the focus it took (a screen reader reads it)

  function showError(text) {
    errorBox.textContent = HA.fill(words.error, { detail: text });
    errorBox.hidden = false;
  }

  // A picture previews from the browser's own copy; a DICOM file is rendered by the server (not kept).
  file.addEventListener("change", function () {
    if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
    var chosen = file.files[0];
    preview.hidden = !chosen;
    if (!chosen) { return; }
    caption.textContent = chosen.name;
    if (chosen.type.indexOf("image/") === 0) {
      previewUrl = URL.createObjectURL(chosen);
      previewImg.src = previewUrl;
      return;
    }
    var body = new FormData();
    body.append("file", chosen);
    fetch(form.action.replace(/\/consultations\/[^/]+\/messages$/, "/preview"), {
      method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": HA.csrf() }, body: body
    }).then(function (response) {
      if (!response.ok) {
        return HA.problemText(response).then(function (text) { caption.textContent = chosen.name + ": " + text; });
      }
      return response.blob().then(function (blob) {
        previewUrl = URL.createObjectURL(blob);
        previewImg.src = previewUrl;
      });
    });
  });

  function add(templateId) {
    var node = document.getElementById(templateId).content.firstElementChild.cloneNode(true);
    list.appendChild(node);
    return node;
  }

  function banner(templateId) {
    var holder = document.getElementById("banners");
    if (holder.querySelector('[data-testid="escalation-banner"]') && templateId === "tpl-escalation") { return; }
    var node = document.getElementById(templateId).content.firstElementChild.cloneNode(true);
    holder.insertBefore(node, holder.firstChild);
    node.setAttribute("tabindex", "-1");
    node.focus();
    bannerFocused = true;
  }

  function finish(node, outcome) {
    var text = node.querySelector(".text");
    text.textContent = outcome.answer || text.textContent;
    var disclaimer = node.querySelector(".disclaimer");
    disclaimer.textContent = outcome.disclaimer || words.disclaimer;
    disclaimer.hidden = false;
    var provenance = node.querySelector(".provenance");
    var p = outcome.provenance;
    // Seconds to two decimals: the server's figure is exact, a person reads it at a glance.
    var shown = p ? Object.assign({}, p, { seconds: Number(p.seconds || 0).toFixed(2) }) : null;
    provenance.textContent = p ? HA.fill(words.provenance, shown) + (p.demo_weights ? " " + words.demo : "")
                               : words.ruleBased;
    provenance.hidden = false;
    var level = outcome.triage && outcome.triage.level;
    if (outcome.escalated || level === "emergency") { banner("tpl-escalation"); }
    else if (level === "urgent") { banner("tpl-urgent"); }
    if (p && outcome.message_id) {
      var box = node.querySelector(".thumbs");
      box.hidden = false;
      HA.wireThumbs(box, feedbackUrl, outcome.message_id, words.thanks);
    }
  }

  // One SSE frame: "event: x" and "data: {...}" lines.
  function parseFrame(frame) {
    var event = "message", data = "";
    frame.split("\n").forEach(function (line) {
      if (line.indexOf("event:") === 0) { event = line.slice(6).trim(); }
      else if (line.indexOf("data:") === 0) { data += line.slice(5).trim(); }
    });
    return { event: event, data: data ? JSON.parse(data) : {} };
  }

  form.addEventListener("submit", function (submitted) {
    submitted.preventDefault();
    if (!input.value.trim()) { input.focus(); return; }
    errorBox.hidden = true;
    send.disabled = true;
    var body = new FormData();
    body.append("message", input.value);
    if (file.files[0]) { body.append("files", file.files[0]); }
    var mine = add("tpl-user");
    mine.querySelector(".text").textContent = input.value;
    if (previewUrl && !preview.hidden) {
      var img = document.createElement("img");
      img.className = "attachment";
      img.alt = caption.textContent;
      img.src = previewUrl;
      previewUrl = null;  // now owned by the message
      mine.appendChild(img);
    }
    var answer = add("tpl-answer");
    var text = answer.querySelector(".text");
    text.textContent = words.thinking;
    var streamed = "";
    var tokens = 0;

    fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Accept": "text/event-stream", "X-CSRF-Token": HA.csrf() },
      body: body
    }).then(function (response) {
      if (!response.ok) {
        return HA.problemText(response).then(function (detail) { answer.remove(); showError(detail); });
      }
      input.value = "";
      file.value = "";
      preview.hidden = true;
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) { return; }
          buffer += decoder.decode(chunk.value, { stream: true });
          var cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            var frame = parseFrame(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (frame.event === "token") {
              streamed += frame.data.text;
              text.textContent = streamed;
              tokens += 1;
              text.setAttribute("data-tokens", String(tokens));  // how many arrived before "done"
            } else if (frame.event === "done") {
              finish(answer, frame.data);
            } else if (frame.event === "error") {
              answer.remove();
              showError(frame.data.detail || "");
            }
          }
          return pump();
        });
      }
      return pump();
    }).catch(function (failure) {
      showError(String(failure));
    }).then(function () {
      send.disabled = false;
      if (!bannerFocused) { input.focus(); }
      bannerFocused = false;
    });
  });
})();
