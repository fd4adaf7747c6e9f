// Keyboard shortcuts on every page, listed in the help dialog (templates/base.html):
//   Ctrl+Shift+O  new chat          Shift+Esc  focus the message box
//   Ctrl+K        search chats      Esc        stop the reply being written
//   Ctrl+/ or ?   this list
// Ctrl is Cmd on a Mac. "?" only counts outside a text field.
(function () {
  "use strict";
  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }
  function help() { return document.getElementById("shortcuts-help"); }
  function openHelp() {
    var dialog = help();
    if (dialog && !dialog.open) dialog.showModal();
  }
  function newChat() {
    var form = document.querySelector("form.new-chat");
    if (form) form.requestSubmit();
    else window.location.assign("/");
  }
  function focusComposer() {
    var box = document.getElementById("composer-content") ||
      document.querySelector("form.composer.start textarea");
    if (box) { box.focus(); return; }
    window.location.assign("/");
  }
  function search() {
    var box = document.getElementById("conversation-search");
    if (box) { box.focus(); box.select(); return; }
    window.location.assign("/#search");
  }
  function stop() {
    var button = document.querySelector("#messages .run-status button.stop");
    if (button) { button.click(); return true; }
    return false;
  }
  document.addEventListener("keydown", function (event) {
    var mod = event.ctrlKey || event.metaKey;
    var key = event.key;
    if (mod && event.shiftKey && (key === "o" || key === "O")) { event.preventDefault(); newChat(); }
    else if (mod && !event.shiftKey && (key === "k" || key === "K")) { event.preventDefault(); search(); }
    else if (mod && key === "/") { event.preventDefault(); openHelp(); }
    else if (key === "?" && !mod && !typing(event.target)) { event.preventDefault(); openHelp(); }
    else if (key === "Escape" && event.shiftKey) { event.preventDefault(); focusComposer(); }
    else if (key === "Escape" && !(help() && help().open) && !document.querySelector("details[open].item-menu")) {
      if (stop()) event.preventDefault();
    }
  });
  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("[data-shortcuts-open]")) openHelp();
    var dialog = help();
    if (dialog && event.target === dialog) dialog.close();  // a click outside the box
  });
  document.addEventListener("DOMContentLoaded", function () {
    if (window.location.hash === "#search") search();
  });
})();
