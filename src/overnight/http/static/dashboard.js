// Overnight's dashboard: refresh the live part of the page every few seconds, without reloading it.
// The server renders each fragment (escaped); this only swaps it in. No framework, no build step.
(function () {
  "use strict";

  function region() {
    return document.querySelector("[data-live-url]");
  }

  function say(text, stale) {
    var status = document.querySelector("[data-live-status]");
    if (status) {
      status.textContent = text;
      status.classList.toggle("stale", Boolean(stale));
    }
  }

  function later(live) {
    window.setTimeout(refresh, Number(live.dataset.pollMs) || 2000);
  }

  function refresh() {
    var live = region();
    if (!live || live.dataset.live !== "true") {
      return;
    }
    fetch(live.dataset.liveUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 401 || response.status === 403 || response.status === 404) {
          window.location.reload(); // signed out, or gone: the page itself says so
          return null;
        }
        if (!response.ok) {
          throw new Error("status " + response.status);
        }
        var keepGoing = response.headers.get("X-Overnight-Live") === "true";
        return response.text().then(function (html) {
          live.innerHTML = html;
          live.dataset.live = keepGoing ? "true" : "false";
          say(keepGoing ? "updated " + new Date().toLocaleTimeString() : "finished", false);
          if (keepGoing) {
            later(live);
          }
        });
      })
      .catch(function () {
        say("cannot reach the server; trying again", true);
        later(live);
      });
  }

  document.addEventListener("submit", function (event) {
    var question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var live = region();
    if (live) {
      later(live);
    }
  });
})();
