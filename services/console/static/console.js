// confbus console: confirmations, live fragments over Server-Sent Events, bake countdowns.
// Hand-written, no build step, no dependency. Every page works without it: acts then ask for
// confirmation on a page of their own, and live parts show what was true when it loaded.
"use strict";

// An act's form asks first; confirmed, it tells the server so (confirm=yes).
// A table's buttons share one form per act (form="act-…"); the button says what it is about.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.classList.contains("act")) return;
  const question = (event.submitter && event.submitter.dataset.confirm) || form.dataset.confirm;
  if (!window.confirm(question)) {
    event.preventDefault();
    return;
  }
  form.elements.namedItem("confirm").value = "yes";
});

// Live parts: each [data-live] element is fetched again (its URL) whenever the audit log has a
// new event matching its data-live-filter; fetches are coalesced so a burst costs one or two.
function follow(element) {
  const url = element.dataset.live;
  const filter = element.dataset.liveFilter || "cfg.event.>";
  const status = document.getElementById("live-status");
  let running = false;
  let again = false;

  async function refresh() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (!response.ok) break;
        element.innerHTML = await response.text();
        countdowns(element);
        element.dataset.updated = String(Date.now());
      } while (again);
      if (status) status.textContent = "Updated " + new Date().toLocaleTimeString();
    } finally {
      running = false;
    }
  }

  const source = new EventSource("/api/v1/events/stream?filter=" + encodeURIComponent(filter));
  // The server says "subscribed" once nothing more can slip past: then fetch once, for
  // whatever happened between the page load and that moment.
  source.addEventListener("subscribed", () => {
    element.dataset.following = "yes";
    refresh();
  });
  source.addEventListener("message", refresh);
  source.addEventListener("error", () => {
    element.dataset.following = "no";
    if (status) status.textContent = "Live updates interrupted; reconnecting…";
  });
}

// A bake's countdown: [data-until] holds the time it ends.
const timers = new Map();
function countdowns(root) {
  for (const el of root.querySelectorAll("[data-until]")) {
    const until = Date.parse(el.dataset.until);
    const tick = () => {
      const left = Math.max(0, Math.round((until - Date.now()) / 1000));
      el.textContent = left > 0 ? left + " s left" : "ending";
    };
    tick();
    clearInterval(timers.get(el));
    timers.set(el, setInterval(tick, 1000));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  countdowns(document);
  for (const element of document.querySelectorAll("[data-live]")) follow(element);
});
