// confbus console: confirmations, live fragments over Server-Sent Events, bake countdowns,
// signing in from a link, and the fleet page's slider through the past.
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
// One showing a past moment (data-at: a stream sequence) is fetched at that moment instead,
// and only when the moment changes: the past does not.
function follow(element) {
  const filter = element.dataset.liveFilter || "cfg.event.>";
  const status = document.getElementById("live-status");
  let running = false;
  let again = false;

  function url() {
    const at = element.dataset.at;
    return at ? element.dataset.live + "&at=" + encodeURIComponent(at) : element.dataset.live;
  }

  async function refresh() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        const response = await fetch(url(), { credentials: "same-origin", cache: "no-store" });
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
    if (!element.dataset.at) refresh();
  });
  source.addEventListener("message", (event) => {
    element.dispatchEvent(new CustomEvent("newer", { detail: Number(event.lastEventId) }));
    if (!element.dataset.at) refresh();
  });
  source.addEventListener("error", () => {
    element.dataset.following = "no";
    if (status) status.textContent = "Live updates interrupted; reconnecting…";
  });
  element.refresh = refresh;
}

// The fleet at a past moment: the slider picks a stream sequence and the fleet below is fetched
// as it was then, without a reload (the browser's own range keys: arrows step one event, Page
// Up/Down more, Home/End the ends). Its right end is now: the fleet is live again. The address
// keeps the moment, so a reload or a shared link shows the same.
function timeTravel(form, live) {
  const slider = form.querySelector("input[type=range]");
  const shown = form.querySelector("output");
  function show() {
    const now = slider.value === slider.max;
    const text = now ? "now (seq " + slider.max + ")" : "seq " + slider.value;
    shown.textContent = text;
    slider.setAttribute("aria-valuetext", now ? "now" : text);
    if (now) delete live.dataset.at;
    else live.dataset.at = slider.value;
    const address = new URL(location.href);
    if (now) address.searchParams.delete("at");
    else address.searchParams.set("at", slider.value);
    history.replaceState(null, "", address);
    if (live.refresh) live.refresh();
  }
  slider.addEventListener("input", show);
  // A new event moves "now" on; at the right end the slider moves with it.
  live.addEventListener("newer", (event) => {
    if (!(event.detail > Number(slider.max))) return;
    const atEnd = slider.value === slider.max;
    slider.max = String(event.detail);
    if (atEnd) {
      slider.value = slider.max;
      shown.textContent = "now (seq " + slider.max + ")";
    }
  });
}

// A sign-in link (/login#token=…) keeps its token after '#', which no request sends: take it
// out of the address (and so of the history) first, then sign in by posting the page's form.
function signInFromLink() {
  const form = document.getElementById("login");
  const match = /^#token=(.+)$/.exec(location.hash);
  if (!form || !match) return;
  history.replaceState(null, "", location.pathname + location.search);
  form.elements.namedItem("token").value = decodeURIComponent(match[1]);
  form.submit();
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
  signInFromLink();
  countdowns(document);
  for (const element of document.querySelectorAll("[data-live]")) follow(element);
  const form = document.getElementById("timetravel");
  const live = document.getElementById("live");
  if (form && live) timeTravel(form, live);
});
