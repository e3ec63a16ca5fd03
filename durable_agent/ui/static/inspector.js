// The durable-agent inspector: live updates and actions without a reload.
// Plain JS, no dependency; the server renders (and escapes) every fragment.
"use strict";

// Replace an element's children with HTML the server's templates rendered
// (and escaped: stored strings never become markup).
function replaceWith(element, html) {
  const holder = document.createElement("div");
  holder.innerHTML = html;
  element.replaceChildren(...holder.childNodes);
}

// Ask `url` every `every` ms while the tab is visible; `apply(html)` on a 200.
// The list uses it (a light poll: one page of headers), and a run page at rest
// (to notice a decision or a resume made elsewhere).
function poll(element, every, query, apply) {
  let busy = false;
  async function refresh() {
    if (busy || document.visibilityState === "hidden") return;
    busy = true;
    try {
      const url = new URL(element.dataset.live, window.location.href);
      for (const [key, value] of Object.entries(query())) url.searchParams.set(key, value);
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.status === 200) apply(await response.text());
    } catch (error) {
      // The server went away for a moment: the next tick tries again.
    } finally {
      busy = false;
    }
  }
  const timer = window.setInterval(refresh, every);
  return { refresh, stop: () => window.clearInterval(timer) };
}

function flash(text, ok) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.textContent = text;  // text, never HTML
  box.className = ok ? "ok" : "refused";
}

// A run page: while the run moves, follow it over server-sent events (each
// message: the events after the last seq this page has, and the body they make);
// while it rests, poll lightly for a change made elsewhere.
function liveRun(element) {
  let source = null;
  let watcher = null;

  function applyBody(html) {
    replaceWith(element, html);
    const now = element.querySelector("[data-version-now]");
    if (!now) return;
    element.dataset.version = now.dataset.versionNow;
    return now.dataset.atRest === "yes";
  }

  function rest() {
    if (watcher) return;
    watcher = poll(element, Number(element.dataset.pollMs || 3000),
      () => ({ seq: element.dataset.version }),
      (html) => {
        const now = applyBody(html);
        const h1 = element.querySelector("[data-seq-now]");
        if (h1) element.dataset.seq = h1.dataset.seqNow;
        if (!now) follow();
      });
  }

  function follow() {
    if (source) return;
    if (watcher) { watcher.stop(); watcher = null; }
    const url = new URL(element.dataset.events, window.location.href);
    url.searchParams.set("after", element.dataset.seq || "0");
    // On a broken connection EventSource reconnects by itself and sends the
    // last id it got (Last-Event-ID): the server goes on right after it.
    source = new EventSource(url);
    source.addEventListener("run", (message) => {
      const data = JSON.parse(message.data);
      if (data.seq <= Number(element.dataset.seq || 0)) return;  // never twice
      element.dataset.seq = String(data.seq);
      element.dataset.eventsSeen = String(Number(element.dataset.eventsSeen || 0) + data.events.length);
      applyBody(data.html);
    });
    const stop = () => { if (source) { source.close(); source = null; } rest(); };
    source.addEventListener("end", stop);
    source.addEventListener("failed", stop);
    source.addEventListener("error", () => {
      // Refused (no token, unknown run): EventSource gives up; so do we.
      if (source && source.readyState === EventSource.CLOSED) stop();
    });
  }

  const h1 = element.querySelector("[data-at-rest]");
  if (h1 && h1.dataset.atRest === "yes") rest(); else follow();
  return { refresh: follow };
}

function liveList(element) {
  return poll(element, Number(element.dataset.pollMs || 3000), () => ({}),
    (html) => replaceWith(element, html));
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run-live");
  const list = document.getElementById("runs-live");
  const live = run ? liveRun(run) : list ? liveList(list) : null;
  const csrf = document.querySelector('meta[name="csrf-token"]');

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
    event.preventDefault();
    const body = new FormData(form);
    if (event.submitter && event.submitter.name) {
      body.set(event.submitter.name, event.submitter.value);
    }
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    try {
      // getAttribute: the buttons named "action" shadow the form.action property.
      const response = await fetch(form.getAttribute("action"), {
        method: "POST",
        body: new URLSearchParams(body),
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrf ? csrf.content : "" },
      });
      const answer = await response.json();
      flash(answer.ok ? answer.message : "refused: " + answer.error, answer.ok);
    } catch (error) {
      flash("the inspector did not answer: " + error, false);
    } finally {
      for (const button of form.querySelectorAll("button")) button.disabled = false;
      if (live) live.refresh();  // the run moves now: follow it
    }
  });
});
