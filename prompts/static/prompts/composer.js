// The chat composer's prompt tools (templates/prompts/_composer_*.html):
// - typing "/" (and a command) opens the picker: ArrowUp/ArrowDown move,
//   Enter or a click chooses, Escape closes; a message template with variables
//   shows a form, and the rendered text goes into the composer (never sent);
// - the Reformulate panel: "Use this text" puts the (edited) rewrite into the
//   composer, "Discard" closes it. Sending stays the composer's own button.
(function () {
  "use strict";
  var COMMAND = /^\/([a-z0-9_-]*)$/i;
  var requested = "";

  function picker() { return document.getElementById("prompt-picker"); }
  function composer() { return document.getElementById("composer-content"); }
  function options() {
    var box = picker();
    return box ? Array.prototype.slice.call(box.querySelectorAll("[role=option]")) : [];
  }
  function listOpen() {
    var box = picker();
    return !!box && !box.hidden && !!box.querySelector("[role=listbox]");
  }
  function close(refocus) {
    var box = picker();
    if (!box) return;
    box.hidden = true;
    box.innerHTML = "";
    requested = "";
    if (refocus && composer()) composer().focus();
  }
  function fetchInto(url) {
    var box = picker();
    box.hidden = false;
    window.htmx.ajax("GET", url, { target: "#prompt-picker", swap: "innerHTML" });
  }
  function search(query) {
    if (query === requested && listOpen()) return;
    requested = query;
    fetchInto(picker().getAttribute("data-picker-url") + "?q=" + encodeURIComponent(query));
  }
  function select(index) {
    var items = options();
    if (!items.length) return;
    index = (index + items.length) % items.length;
    items.forEach(function (item, i) {
      item.setAttribute("aria-selected", i === index ? "true" : "false");
      if (i === index) item.scrollIntoView({ block: "nearest" });
    });
  }
  function selectedIndex() {
    return options().findIndex(function (item) {
      return item.getAttribute("aria-selected") === "true";
    });
  }
  function choose(item) {
    if (item && item.getAttribute("data-fill-url")) fetchInto(item.getAttribute("data-fill-url"));
  }
  function insert(text) {
    var box = composer();
    box.value = text;
    box.focus();
    box.setSelectionRange(text.length, text.length);
  }

  document.addEventListener("input", function (event) {
    if (event.target !== composer() || !picker()) return;
    var match = COMMAND.exec(event.target.value);
    if (match) search(match[1]);
    else if (listOpen()) close(false);
  });
  // Capture phase: before the composer's own Enter-sends (static/js/chat.js).
  document.addEventListener("keydown", function (event) {
    var box = picker();
    if (!box || box.hidden) return;
    if (event.key === "Escape") {
      event.preventDefault();
      close(true);
      return;
    }
    if (event.target !== composer() || !listOpen()) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      select(selectedIndex() + (event.key === "ArrowDown" ? 1 : -1));
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      event.stopPropagation();
      choose(options()[Math.max(selectedIndex(), 0)]);
    }
  }, true);
  document.addEventListener("click", function (event) {
    var item = event.target.closest && event.target.closest("#prompt-picker [role=option]");
    if (item) choose(item);
    if (event.target.closest && event.target.closest("[data-picker-close]")) close(true);
    if (event.target.closest && event.target.closest("[data-reformulation-accept]")) {
      var rewrite = document.getElementById("reformulation-text");
      if (rewrite) insert(rewrite.value);
      document.getElementById("reformulation").innerHTML = "";
    }
    if (event.target.closest && event.target.closest("[data-reformulation-discard]")) {
      document.getElementById("reformulation").innerHTML = "";
      if (composer()) composer().focus();
    }
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (!target) return;
    if (target.id === "prompt-picker") {
      var rendered = target.querySelector("[data-prompt-rendered]");
      if (rendered) {
        var text = rendered.value;
        close(false);
        insert(text);
        return;
      }
      target.scrollIntoView({ block: "nearest" });
    } else if (target.id === "reformulation") {
      target.scrollIntoView({ block: "nearest" });
    }
  });
  // htmx gives swapped-in content its behaviour when it settles, not when it is
  // swapped: focusing the variable form only then means Enter or Fill posts it by
  // htmx, never as a plain form that would leave the chat.
  document.addEventListener("htmx:afterSettle", function (event) {
    var target = event.detail && event.detail.target;
    if (!target || target.id !== "prompt-picker") return;
    var field = target.querySelector("#prompt-fill input");
    if (field) field.focus();
  });
})();
