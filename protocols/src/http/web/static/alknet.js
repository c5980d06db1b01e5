// alknet: progressive enhancement only. Every page works without this file.
"use strict";
document.documentElement.classList.add("js");

// Pickers (branch, snapshot) go where their option points.
for (const select of document.querySelectorAll("select[data-nav-select]")) {
  select.addEventListener("change", () => { window.location.href = select.value; });
}

// Forms that delete ask first.
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}

// Uploads: progress, folders with their paths, drag and drop; one commit.
const upload = document.getElementById("upload");
if (upload) {
  const progress = document.getElementById("progress");
  const send = (items) => {
    if (items.length === 0) return;
    const data = new FormData();
    for (const [path, file] of items) {
      data.append("path", path);
      data.append("file", file, file.name);
    }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", upload.action);
    xhr.setRequestHeader("Accept", "application/json");
    progress.hidden = false;
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        window.location.reload();
      } else {
        progress.hidden = true;
        const page = new DOMParser().parseFromString(xhr.responseText, "text/html");
        const message = page.querySelector(".error");
        window.alert("The upload failed: " + (message ? message.textContent : xhr.status));
      }
    });
    xhr.addEventListener("error", () => { progress.hidden = true; window.alert("The upload broke off."); });
    xhr.send(data);
  };
  upload.addEventListener("submit", (event) => {
    event.preventDefault();
    const items = [];
    for (const input of upload.querySelectorAll("input[type=file]")) {
      for (const file of input.files) items.push([file.webkitRelativePath || file.name, file]);
    }
    send(items);
  });
  // Folders dropped on the page: walk them, keeping relative paths.
  const walk = async (entry, prefix, out) => {
    if (entry.isFile) {
      const file = await new Promise((ok, fail) => entry.file(ok, fail));
      out.push([prefix + entry.name, file]);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (batch.length === 0) break;
        for (const child of batch) await walk(child, prefix + entry.name + "/", out);
      }
    }
  };
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", async (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    const items = [];
    for (const entry of entries) await walk(entry, "", items);
    send(items);
  });
}

// Live listings: another writer's commit in this directory refreshes it.
const listing = document.getElementById("listing");
if (listing && listing.dataset.events && window.EventSource) {
  const dir = listing.dataset.dir.replace(/\/$/, "");
  const touches = (path) => {
    const parent = path.replace(/\/[^/]*$/, "");
    return parent === dir || path === dir || path.startsWith(dir + "/") || dir.startsWith(path + "/");
  };
  const events = new EventSource(listing.dataset.events);
  // A page left behind must let its stream go: browsers allow six
  // connections to a host, and a cached page may keep its own open.
  window.addEventListener("pagehide", () => events.close());
  events.addEventListener("commit", async (event) => {
    const commit = JSON.parse(event.data);
    if (!(commit.paths || []).some(touches)) return;
    const response = await fetch(window.location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("listing");
    if (fresh) {
      listing.replaceChildren(...fresh.childNodes);
      listing.dataset.refreshed = String(Number(listing.dataset.refreshed || 0) + 1);
    }
  });
}
