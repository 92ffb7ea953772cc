// The dashboard's progressive enhancement: every page works without it.
// - Files page: follows the change feed (server-sent events) and reloads
//   the listing when something below the folder changes; lists recent
//   changes under "Activity".
// - Uploads: a progress bar, and files dropped on the form.
"use strict";

function followChanges() {
  const listing = document.getElementById("listing");
  if (!listing || !window.EventSource) return;
  const dir = listing.dataset.dir;
  const below = dir === "" ? "" : dir + "/";
  const activity = document.getElementById("activity");
  let pending = null;
  const source = new EventSource(listing.dataset.live);
  source.addEventListener("change", (message) => {
    const change = JSON.parse(message.data);
    if (activity) {
      if (activity.dataset.started !== "1") {
        activity.textContent = "";
        activity.dataset.started = "1";
      }
      const item = document.createElement("li");
      item.textContent = `#${change.seq} ${change.kind} ${change.path} (${change.client || "server"})`;
      activity.prepend(item);
      while (activity.children.length > 50) activity.lastChild.remove();
    }
    if (change.path === dir || change.path.startsWith(below)) {
      clearTimeout(pending);
      pending = setTimeout(reloadListing, 100);
    }
  });
}

async function reloadListing() {
  const response = await fetch(window.location.href, { credentials: "same-origin" });
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.getElementById("listing");
  const listing = document.getElementById("listing");
  if (fresh && listing) listing.innerHTML = fresh.innerHTML;
}

function enhanceUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("upload-file");
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  form.addEventListener("dragover", (e) => {
    e.preventDefault();
    form.classList.add("over");
  });
  form.addEventListener("dragleave", () => form.classList.remove("over"));
  form.addEventListener("drop", (e) => {
    e.preventDefault();
    form.classList.remove("over");
    input.files = e.dataTransfer.files;
    send();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  function send() {
    if (!input.files.length) return;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "Uploading…";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 400) {
        status.textContent = "Uploaded.";
        window.location.assign(xhr.responseURL || window.location.href);
      } else {
        const page = new DOMParser().parseFromString(xhr.responseText, "text/html");
        const error = page.getElementById("error");
        status.textContent = "Refused: " + (error ? error.textContent : xhr.statusText);
        status.classList.add("error");
      }
    });
    xhr.addEventListener("error", () => {
      status.textContent = "The upload broke off; nothing was stored.";
      status.classList.add("error");
    });
    xhr.send(new FormData(form));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  followChanges();
  enhanceUpload();
});
