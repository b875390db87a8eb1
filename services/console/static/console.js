/* Sendout console: progressive enhancement only; every page works without it. */
(function () {
  "use strict";

  // The user's time zone, for the schedule form and times shown.
  function timeZones() {
    var tz = "UTC";
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { /* keep UTC */ }
    // Tells the server the time zone to show times in (not a secret: a plain cookie).
    document.cookie = "sendout_tz=" + encodeURIComponent(tz) + "; path=/; SameSite=Lax";
    document.querySelectorAll("[data-tz-input]").forEach(function (el) { el.value = tz; });
    document.querySelectorAll("[data-tz-name]").forEach(function (el) { el.textContent = tz; });
    document.querySelectorAll("time[data-local]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) { el.textContent = d.toLocaleString() + " (" + tz + ")"; }
    });
  }

  // Live progress: Server-Sent Events from the console.
  function progress() {
    var box = document.querySelector("[data-progress-url]");
    if (!box || !window.EventSource) { return; }
    var bar = box.querySelector("progress");
    var source = new EventSource(box.getAttribute("data-progress-url"));
    function set(name, value) {
      box.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
        el.textContent = String(value);
      });
    }
    source.onmessage = function (event) {
      var p = JSON.parse(event.data);
      var total = p.total || 0;
      var settled = (p.completed || 0) + (p.failed || 0) + (p.skipped || 0);
      ["state", "pending", "completed", "failed", "skipped", "delivered", "not_delivered", "processed"]
        .forEach(function (k) { if (p[k] !== undefined && p[k] !== null) { set(k, p[k]); } });
      set("total", total);
      set("settled", settled);
      set("percent", total ? Math.floor(settled * 100 / total) : 0);
      if (bar) {
        bar.max = total || 1;
        bar.value = settled;
        bar.setAttribute("aria-valuemax", String(total || 1));
        bar.setAttribute("aria-valuenow", String(settled));
      }
      var list = box.querySelector('[data-field="reasons"]');
      if (list && p.reasons) {
        list.textContent = "";
        Object.keys(p.reasons).forEach(function (status) {
          Object.keys(p.reasons[status]).forEach(function (reason) {
            var li = document.createElement("li");
            li.textContent = status.replace(/_/g, " ") + ": " + reason.replace(/_/g, " ") +
              " — " + p.reasons[status][reason];
            list.appendChild(li);
          });
        });
        if (!list.children.length) {
          var none = document.createElement("li");
          none.textContent = "None so far.";
          list.appendChild(none);
        }
      }
      // The state in the page's sentences too ("This campaign is aborting" must not stay
      // once the progress says aborted); "starting" is the progress block's alone.
      if (p.state && p.state !== "starting") {
        document.querySelectorAll("[data-campaign-state]").forEach(function (el) {
          el.textContent = p.state;
        });
      }
      if (p.state === "completed" || p.state === "aborted") {
        document.querySelectorAll("[data-hide-when-done]").forEach(function (el) { el.hidden = true; });
      }
    };
    source.addEventListener("done", function () { source.close(); });
  }

  // Peer to peer: SEND (or Enter on the focused SEND) sends, then focus moves to the next one.
  function p2p() {
    var list = document.querySelector("ol.recipients");
    if (!list) { return; }
    var csrf = list.getAttribute("data-csrf");
    function nextButton(from) {
      var all = Array.prototype.slice.call(list.querySelectorAll("button.send:not([disabled])"));
      var after = all.filter(function (b) {
        return from.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING;
      });
      return after[0] || null;
    }
    list.addEventListener("submit", function (event) {
      var form = event.target;
      if (!form.classList.contains("send-form")) { return; }
      event.preventDefault();
      var button = form.querySelector("button");
      if (button.disabled) { return; }
      button.disabled = true;
      var item = form.closest("li");
      var status = item.querySelector("[data-status]");
      var next = nextButton(button);
      if (next) { next.focus(); }
      fetch(form.action, {
        method: "POST", body: new FormData(form), credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRF-Token": csrf }
      }).then(function (r) {
        return r.json().then(function (body) { return { ok: r.ok, body: body }; });
      }).then(function (res) {
        if (res.ok) {
          status.textContent = res.body.text;
          form.remove();
          item.classList.add("done");
        } else {
          status.textContent = "Not sent: " + res.body.message;
          button.disabled = false;
        }
      }).catch(function () {
        status.textContent = "Not sent: the connection failed. Press SEND again.";
        button.disabled = false;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    timeZones();
    progress();
    p2p();
  });
})();
