// Chat page behaviour: Enter sends, Shift+Enter adds a line; the composer keeps
// its text until the server took the message (the answer over the WebSocket
// says "sent" or "refused": conversations/events.py error_fragment), counts the
// characters near the limit and refuses to send over it; the message list
// follows the stream while the reader is at the bottom.
(function () {
  "use strict";
  // The user's setting (body data-send-key): Enter sends and Shift+Enter adds a
  // line, or Ctrl+Enter (Cmd+Enter) sends and Enter adds a line.
  document.addEventListener("keydown", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("textarea[data-enter-sends]")) return;
    if (event.key !== "Enter" || event.isComposing) return;
    var ctrl = document.body.getAttribute("data-send-key") === "ctrl_enter";
    var sends = ctrl ? (event.ctrlKey || event.metaKey) : !event.shiftKey;
    if (sends) {
      event.preventDefault();
      if (box.value.trim()) box.form.requestSubmit();
    }
  });

  // -- the length limit (TOLLGATE_MAX_MESSAGE_CHARS) -----------------------------
  // Counted as the server counts: code points of the text without the blanks
  // around it. A UTF-16 length is never smaller, so short texts skip the count.
  function charCount(text) {
    return Array.from(text.trim()).length;
  }
  function number(n) { return n.toLocaleString("en-US"); }
  function tooLong(count, limit) {
    return "The message is too long (" + number(count) + " characters; the limit is " +
      number(limit) + ").";
  }
  function showError(text) {
    var box = document.getElementById("chat-errors");
    if (!box) return;
    box.removeAttribute("data-composer");
    box.textContent = "";
    if (!text) return;
    var p = document.createElement("p");
    p.className = "error-box";
    p.textContent = text + " ";
    var close = document.createElement("button");
    close.type = "button";
    close.className = "link";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "\u00d7";
    close.addEventListener("click", function () { p.remove(); });
    p.appendChild(close);
    box.appendChild(p);
  }
  // Shows the counter from 90% of the limit; returns the count when over it, else 0.
  function updateCount(box) {
    var limit = parseInt(box.getAttribute("data-max-chars"), 10);
    var counter = box.form && box.form.querySelector(".composer-count");
    if (!limit || !counter) return 0;
    var count = box.value.length < limit * 0.9 ? box.value.length : charCount(box.value);
    var near = count >= limit * 0.9;
    counter.hidden = !near;
    counter.classList.toggle("over", count > limit);
    if (near) {
      counter.textContent = number(count) + " / " + number(limit) +
        (count > limit ? " — " + number(count - limit) + " over the limit" : "");
    }
    return count > limit ? count : 0;
  }
  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches("textarea[data-max-chars]")) {
      updateCount(event.target);
    }
  });
  // Before htmx (ws-send) or the browser sends it: a message over the limit stays
  // in the composer with the reason, and nothing is sent.
  document.addEventListener("submit", function (event) {
    var box = event.target.querySelector && event.target.querySelector("textarea[data-max-chars]");
    if (!box) return;
    var over = updateCount(box);
    if (over) {
      event.preventDefault();
      event.stopPropagation();
      showError(tooLong(over, parseInt(box.getAttribute("data-max-chars"), 10)));
      box.focus();
    }
  }, true);

  // -- attached files (conversations/attachments.py) -------------------------------
  // Each file picked (Attach) or dropped on the composer is uploaded on its own and
  // becomes a chip: the server's (its document, how far it is read, polled by htmx)
  // once stored, or removed with the reason shown when refused. The chips' hidden
  // inputs send the documents with the message; nothing typed is touched.
  function chipsBox() { return document.getElementById("composer-attachments"); }
  function csrfToken() {
    var token = document.querySelector("#composer input[name=csrfmiddlewaretoken]");
    return token ? token.value : "";
  }
  function attachedIds(box) {
    return Array.prototype.map.call(box.querySelectorAll("input[name=attachments]"),
      function (input) { return input.value; });
  }
  function attach(file) {
    var box = chipsBox();
    if (!box) return;
    var limit = parseInt(box.getAttribute("data-limit"), 10);
    if (limit && box.querySelectorAll(".attachment-chip").length >= limit) {
      showError(file.name + ": a message can carry at most " + limit + " file" +
        (limit === 1 ? "" : "s") + ". Remove one to attach another.");
      return;
    }
    var chip = document.createElement("span");
    chip.className = "attachment-chip attachment-uploading";
    chip.setAttribute("data-status", "uploading");
    chip.textContent = file.name + " — uploading…";
    box.appendChild(chip);
    var data = new FormData();
    data.append("file", file);
    attachedIds(box).forEach(function (id) { data.append("attached", id); });
    fetch(box.getAttribute("data-upload"), {
      method: "POST", body: data, credentials: "same-origin",
      headers: {"X-CSRFToken": csrfToken()}
    }).then(function (response) {
      return response.text().then(function (text) { return {ok: response.ok, text: text}; });
    }).then(function (answer) {
      if (!answer.ok) {
        chip.remove();
        showError(answer.text || file.name + " could not be attached.");
        return;
      }
      var holder = document.createElement("div");
      holder.innerHTML = answer.text.trim();
      var made = holder.firstElementChild;
      chip.replaceWith(made);
      if (window.htmx) window.htmx.process(made);
    }, function () {
      chip.remove();
      showError(file.name + " could not be uploaded: the connection failed.");
    });
  }
  document.addEventListener("click", function (event) {
    if (!event.target.closest) return;
    if (event.target.closest("[data-attach]")) {
      var input = document.getElementById("composer-files");
      if (input) input.click();
      return;
    }
    var remove = event.target.closest(".attachment-remove");
    if (!remove) return;
    var chip = remove.closest(".attachment-chip");
    chip.remove();
    fetch(remove.getAttribute("data-remove"), {
      method: "POST", credentials: "same-origin", headers: {"X-CSRFToken": csrfToken()}
    }).catch(function () { showError("The file could not be removed: the connection failed."); });
  });
  document.addEventListener("change", function (event) {
    if (event.target.id !== "composer-files") return;
    Array.prototype.forEach.call(event.target.files, attach);
    event.target.value = "";
  });
  function carriesFiles(event) {
    return event.dataTransfer && Array.prototype.indexOf.call(event.dataTransfer.types, "Files") >= 0;
  }
  ["dragenter", "dragover"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      var form = event.target.closest && event.target.closest("#composer");
      if (!form || !carriesFiles(event)) return;
      event.preventDefault();
      form.classList.add("dragging");
    });
  });
  document.addEventListener("dragleave", function (event) {
    var form = event.target.closest && event.target.closest("#composer");
    if (form && !form.contains(event.relatedTarget)) form.classList.remove("dragging");
  });
  document.addEventListener("drop", function (event) {
    var form = event.target.closest && event.target.closest("#composer");
    if (!form || !carriesFiles(event)) return;
    event.preventDefault();
    form.classList.remove("dragging");
    Array.prototype.forEach.call(event.dataTransfer.files, attach);
  });
  // A file still uploading has no document yet: the message waits for it.
  document.addEventListener("submit", function (event) {
    if (event.target.id !== "composer") return;
    if (event.target.querySelector(".attachment-chip[data-status=uploading]")) {
      event.preventDefault();
      event.stopPropagation();
      showError("Wait for the files to finish uploading, then send.");
    }
  }, true);

  // -- sent or refused -----------------------------------------------------------
  var pending = null; // the text of the message on its way, until the server answers
  var pendingFiles = []; // the documents sent with it (their chips go once it is taken)
  document.addEventListener("htmx:wsAfterSend", function (event) {
    var form = event.target.closest && event.target.closest("#composer");
    if (form) {
      pending = form.querySelector("textarea").value;
      pendingFiles = attachedIds(form);
    }
  });
  function answered() {
    var errors = document.getElementById("chat-errors");
    var outcome = errors && errors.getAttribute("data-composer");
    if (!outcome) return;
    errors.removeAttribute("data-composer");
    var box = document.getElementById("composer-content");
    if (!box) return;
    // Sent: the text went out; clear it unless more was typed meanwhile.
    if (outcome === "sent" && pending !== null && box.value === pending) {
      box.value = "";
      updateCount(box);
      // A chain is picked for one message: the next one is a normal reply again.
      var chain = document.getElementById("composer-chain");
      if (chain) chain.value = "";
    }
    if (outcome === "sent") {
      pendingFiles.forEach(function (id) {
        var chip = document.getElementById("attachment-" + id);
        if (chip) chip.remove();
      });
    }
    pending = null;
    pendingFiles = [];
    box.focus();
  }

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
    groupConversations(list);
  }
  // Pinned ones first, then a heading before each group: Today, Yesterday,
  // Previous 7 days, Older (by the day of the conversation's last change, UTC as
  // the server dates it).
  var DAY = 86400000;
  function groupOf(item) {
    if (item.getAttribute("data-pinned") === "1") return "Pinned";
    var day = Date.parse((item.getAttribute("data-day") || "") + "T00:00:00Z");
    if (isNaN(day)) return "Older";
    var now = new Date();
    var today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
    var age = Math.round((today - day) / DAY);
    if (age <= 0) return "Today";
    if (age === 1) return "Yesterday";
    if (age <= 7) return "Previous 7 days";
    return "Older";
  }
  function groupConversations(list) {
    list.querySelectorAll(".group-head").forEach(function (head) { head.remove(); });
    if (list.getAttribute("data-archived") === "1") return;
    var items = Array.prototype.slice.call(list.querySelectorAll(".conversation-item"));
    var pinned = items.filter(function (item) { return item.getAttribute("data-pinned") === "1"; });
    var others = items.filter(function (item) { return pinned.indexOf(item) < 0; });
    var anchor = others[0] || list.querySelector(".conversation-more");
    pinned.forEach(function (item) { list.insertBefore(item, anchor); });  // in their order
    var current = null;
    list.querySelectorAll(".conversation-item").forEach(function (item) {
      var group = groupOf(item);
      if (group === current) return;
      current = group;
      var head = document.createElement("li");
      head.className = "group-head";
      head.setAttribute("role", "presentation");
      head.textContent = group;
      list.insertBefore(head, item);
    });
  }
  // A sidebar action returns to this page; a pushed item's form gets the CSRF token.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.closest || !form.closest(".item-menu")) return;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    var next = form.querySelector("input[name=next]");
    if (next) next.value = window.location.pathname + window.location.search;
    if (!form.querySelector("input[name=csrfmiddlewaretoken]")) {
      var token = document.querySelector("input[name=csrfmiddlewaretoken]");
      if (token) form.appendChild(token.cloneNode());
    }
  });
  // A tool call's step the reader opened stays open when a push redraws it.
  var openSteps = {};
  document.addEventListener("toggle", function (event) {
    var step = event.target;
    if (step.classList && step.classList.contains("step-details") && step.id) {
      openSteps[step.id] = step.open;
    }
  }, true);
  function reopenSteps() {
    Object.keys(openSteps).forEach(function (id) {
      var step = openSteps[id] && document.getElementById(id);
      if (step && !step.open) step.open = true;
    });
  }
  document.addEventListener("htmx:wsAfterMessage", function () {
    redrawIfAsked();
    answered();
    reopenSteps();
    decorateCode();
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
  function redraw() {
    if (document.getElementById("messages") && window.htmx) {
      window.htmx.ajax("GET", window.location.pathname, {
        target: "#messages", select: "#messages", swap: "outerHTML"
      });
    }
  }
  document.addEventListener("htmx:wsOpen", function () {
    if (opened || document.querySelector(ACTIVE)) redraw();
    opened = true;
  });
  // The branch shown changed (an answer regenerated, a message edited, another
  // version picked: conversations/events.py timeline_redraw): draw it again.
  var drawnAt = null;
  function redrawIfAsked() {
    var marker = document.getElementById("timeline-redraw");
    var at = marker && marker.getAttribute("data-at");
    if (at && at !== drawnAt) {
      drawnAt = at;
      redraw();
    }
  }

  // -- a compare exchange's tabs (a phone: chat.css shows one column at a time) -------
  document.addEventListener("click", function (event) {
    var tab = event.target.closest && event.target.closest(".compare-tab");
    if (!tab) return;
    var compare = tab.closest(".compare");
    compare.querySelectorAll(".compare-tab").forEach(function (other) {
      other.setAttribute("aria-selected", String(other === tab));
    });
    compare.querySelectorAll(".compare-column").forEach(function (column) {
      column.classList.toggle("active", column.id === tab.getAttribute("aria-controls"));
    });
  });

  // -- the sidebar as a drawer (a phone) -----------------------------------------------
  function drawer(open) {
    var chat = document.querySelector(".chat");
    if (!chat) return;
    chat.classList.toggle("drawer-open", open);
    document.querySelectorAll("[data-drawer-toggle]").forEach(function (b) {
      b.setAttribute("aria-expanded", String(open));
    });
  }
  document.addEventListener("click", function (event) {
    if (!event.target.closest) return;
    if (event.target.closest("[data-drawer-toggle]")) {
      drawer(!document.querySelector(".chat.drawer-open"));
    } else if (event.target.closest("[data-drawer-close]") ||
               event.target.closest(".chat.drawer-open .sidebar a")) {
      drawer(false);
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && document.querySelector(".chat.drawer-open")) drawer(false);
  });

  // -- edit and resend ---------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-edit]");
    if (!button) return;
    var form = document.getElementById(button.getAttribute("data-edit"));
    if (!form) return;
    form.hidden = !form.hidden;
    document.querySelectorAll('[data-edit="' + form.id + '"][aria-expanded]').forEach(function (b) {
      b.setAttribute("aria-expanded", String(!form.hidden));
    });
    if (!form.hidden) {
      var box = form.querySelector("textarea");
      box.focus();
      box.setSelectionRange(box.value.length, box.value.length);
    }
  });
  // -- copy ------------------------------------------------------------------------
  // A code block's text, or a whole message's Markdown source (the <template> the
  // message carries: conversations/chat.html "message"), to the clipboard.
  function copied(button) {
    var label = button.textContent;
    button.textContent = "Copied";
    button.classList.add("done");
    setTimeout(function () { button.textContent = label; button.classList.remove("done"); }, 1500);
  }
  function copyText(text, button) {
    var done = function () { copied(button); };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { showError("Could not copy: the browser refused."); });
      return;
    }
    var area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } finally { area.remove(); }
  }
  // Each finished message's code blocks get a Copy button (the page's and pushed ones).
  function decorateCode(root) {
    (root || document).querySelectorAll(".msg:not(.msg-streaming) .msg-body pre:not([data-copy])")
      .forEach(function (pre) {
        pre.setAttribute("data-copy", "");
        var button = document.createElement("button");
        button.type = "button";
        button.className = "copy-code secondary";
        button.textContent = "Copy";
        button.setAttribute("aria-label", "Copy this code");
        pre.insertBefore(button, pre.firstChild);
      });
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button.copy-code, button.copy-message");
    if (!button) return;
    if (button.classList.contains("copy-code")) {
      var pre = button.closest("pre");
      var code = pre.querySelector("code");
      copyText((code || pre).textContent.replace(/^Copy/, ""), button);
    } else {
      var source = document.getElementById(button.getAttribute("data-source"));
      if (source) copyText(source.content.textContent, button);
    }
  });
  document.addEventListener("htmx:afterSettle", function (event) { decorateCode(); });

  document.addEventListener("DOMContentLoaded", function () {
    decorateCode();
    tidyConversations();
    // Opened at a message (a search's match): show it; else follow the end.
    var found = window.location.hash && document.getElementById(window.location.hash.slice(1));
    if (found && found.classList.contains("msg")) {
      found.classList.add("found");
      found.scrollIntoView({block: "center"});
      follow = false;
    } else if (document.getElementById("messages")) {
      window.scrollTo(0, document.body.scrollHeight);
    }
    document.querySelectorAll("textarea[data-max-chars]").forEach(updateCount);
  });
})();
