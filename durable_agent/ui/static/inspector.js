// The durable-agent inspector: live updates and actions without a reload.
// Plain JS, no dependency; the server renders (and escapes) every fragment.
"use strict";

// The seam for live updates. Today it polls the fragment URL; when the store
// can follow a run (server-sent events over `follow`), replace the body of
// `subscribe` with an EventSource and keep its contract: call `apply(html,
// version)` whenever the run moved, and `refresh()` to ask right now.
function subscribe(element, apply) {
  const every = Number(element.dataset.pollMs || 1000);
  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const url = new URL(element.dataset.live, window.location.href);
      if (element.dataset.version) url.searchParams.set("seq", element.dataset.version);
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

function liveRun(element) {
  return subscribe(element, (html) => {
    const holder = document.createElement("div");
    holder.innerHTML = html;  // rendered and escaped by the server's templates
    element.replaceChildren(...holder.childNodes);
    const now = element.querySelector("[data-version-now]");
    if (now) element.dataset.version = now.dataset.versionNow;
  });
}

function liveList(element) {
  return subscribe(element, (html) => {
    const holder = document.createElement("div");
    holder.innerHTML = html;
    element.replaceChildren(...holder.childNodes);
  });
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
      if (live) live.refresh();
    }
  });
});
