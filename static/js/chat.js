// Chat page behaviour: Enter sends, Shift+Enter adds a line, the composer
// clears after its message went out over the WebSocket (and gets its text back
// if the server refused it), and the message list
// follows the stream while the reader is at the bottom.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("textarea[data-enter-sends]")) return;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (box.value.trim()) box.form.requestSubmit();
    }
  });
  // A refused message's text comes back as the textarea's content (its default
  // value: conversations/events.py composer_text_fragment); clear that too.
  document.addEventListener("htmx:wsAfterSend", function (event) {
    var form = event.target.closest && event.target.closest("#composer");
    if (!form) return;
    var box = form.querySelector("textarea");
    box.defaultValue = "";
    form.reset();
    box.focus();
  });
  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 160;
  }
  var follow = true;
  document.addEventListener("htmx:wsBeforeMessage", function () { follow = nearBottom(); });
  // The sidebar list: a push puts a changed conversation's item first
  // (conversations/events.py); keep that copy and drop the older one, drop
  // items that belong to the other list (archived or not) or were deleted,
  // show the "no conversations" line when none is left, and mark the one open.
  function tidyConversations() {
    var list = document.getElementById("conversation-list");
    if (!list) return;
    var seen = {};
    list.querySelectorAll(".conversation-item").forEach(function (item) {
      var repeated = seen[item.id];
      seen[item.id] = true;
      if (repeated || item.hasAttribute("data-deleted") ||
          item.getAttribute("data-archived") !== list.getAttribute("data-archived")) {
        item.remove();
        return;
      }
      var link = item.querySelector("a");
      item.classList.toggle("current", !!link && link.pathname === window.location.pathname);
    });
    var empty = document.getElementById("conversation-list-empty");
    if (empty) empty.hidden = !!list.querySelector(".conversation-item");
  }
  document.addEventListener("htmx:wsAfterMessage", function () {
    tidyConversations();
    if (follow) window.scrollTo(0, document.body.scrollHeight);
  });
  document.addEventListener("htmx:afterSwap", tidyConversations);
  // Pushes sent while the page had no socket are lost: after a reconnect, and
  // on the first connect when a reply was in progress as the page was drawn
  // (it may have moved on before the socket joined), redraw from the server
  // (the database is the truth); frames continue from there.
  var opened = false;
  var ACTIVE = "#messages .run-status:not(.run-completed):not(.run-failed):not(.run-cancelled)";
  document.addEventListener("htmx:wsOpen", function () {
    var stale = opened || document.querySelector(ACTIVE);
    if (stale && document.getElementById("messages") && window.htmx) {
      window.htmx.ajax("GET", window.location.href, {
        target: "#messages", select: "#messages", swap: "outerHTML"
      });
    }
    opened = true;
  });
  document.addEventListener("DOMContentLoaded", function () {
    if (document.getElementById("messages")) window.scrollTo(0, document.body.scrollHeight);
  });
})();
