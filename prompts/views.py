"""The prompts pages and the chat composer's "/" picker. Views parse input, call
one service or selector, render.

A prompt the user may not see answers 404, exactly as one that does not exist;
one they may see but not change (shared with them) answers 403 to a change. A
refused change (``PromptError``) draws its page again with the message and what
was typed, with 400.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.log import log_response
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthenticatedHttpRequest
from accounts.sharing import groups_to_share_with
from project.inbound import InboundError, form_message, json_parse
from prompts import selectors, services
from prompts.diffs import diff_table
from prompts.errors import (
    PromptError,
    PromptNotFound,
    PromptReadOnly,
    PromptTemplateError,
)
from prompts.forms import (
    ChainForm,
    ChainStepForm,
    DiffForm,
    ImportForm,
    LabelForm,
    PromptCreateForm,
    PromptEditForm,
    RestoreForm,
    ShareForm,
)
from prompts.models import DEFAULT_LABEL, MAX_CHAIN_STEPS, MAX_ROUNDS, Chain, Prompt
from prompts.templating import template_render


def _refused(
    request: AuthenticatedHttpRequest, response: HttpResponse, message: str
) -> HttpResponse:
    log_response(
        "Refused %s for user %s: %s", request.path, request.user.pk, message,
        response=response, request=request,
    )  # fmt: skip
    return response


def _not_found(error: PromptError) -> HttpResponse:
    if isinstance(error, PromptNotFound):
        raise Http404(str(error))
    if isinstance(error, PromptReadOnly):
        raise PermissionDenied(str(error))
    raise error


def _detail(prompt_id: int) -> HttpResponse:
    return redirect("prompts:detail", prompt_id)


@login_required
@require_GET
def prompt_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The user's library: own prompts, then those shared with them; ``?q=`` searches
    name, command and description, ``?kind=`` filters."""
    query = request.GET.get("q", "")[:100]
    kind = request.GET.get("kind", "")
    kind = kind if kind in Prompt.Kind.values else ""
    context = {
        "prompts": selectors.prompt_list(user=request.user, query=query, kind=kind),
        "query": query,
        "kind": kind,
        "kinds": Prompt.Kind.choices,
        "reformulation": selectors.reformulation_prompt(user=request.user),
    }
    return render(request, "prompts/list.html", context)


@login_required
def prompt_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method != "POST":
        kind = request.GET.get("kind", Prompt.Kind.TEMPLATE)
        form = PromptCreateForm(initial={"kind": kind})
        return render(request, "prompts/form.html", {"form": form, "creating": True})
    form = PromptCreateForm(request.POST)
    error = ""
    if form.is_valid():
        data = form.cleaned_data
        try:
            prompt = services.prompt_create(
                user=request.user,
                name=data["name"],
                command=data["command"],
                kind=data["kind"],
                description=data["description"],
                **form.version_data(),
            )
        except PromptError as refused:
            error = str(refused)
        else:
            messages.success(request, f"Saved /{prompt.command} as version 1.")
            return _detail(prompt.pk)
    else:
        error = form_message(form)
    response = render(
        request, "prompts/form.html", {"form": form, "creating": True, "error": error}, status=400
    )
    return _refused(request, response, error)


@login_required
@require_GET
def prompt_detail(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    """A prompt's versions (newest first), labels, sharing, and a diff of any two."""
    try:
        detail = selectors.prompt_detail(user=request.user, prompt_id=prompt_id)
    except PromptError as error:
        return _not_found(error)
    mine = selectors.may_edit(user=request.user, prompt=detail.prompt)
    groups = list(groups_to_share_with(user=request.user)) if mine else []
    context = {
        "detail": detail,
        "prompt": detail.prompt,
        "mine": mine,
        "groups": groups,
        "shared_with": set(detail.prompt.groups.values_list("pk", flat=True)) if mine else set(),
        "visibilities": Prompt.Visibility.choices,
        "diff_a": detail.versions[1].number if len(detail.versions) > 1 else detail.latest.number,
        "diff_b": detail.latest.number,
        "reformulation": selectors.reformulation_prompt(user=request.user),
    }
    return render(request, "prompts/detail.html", context)


@login_required
def prompt_edit(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    """Edit = a new version (n + 1) with the text, and the prompt's name/command."""
    try:
        detail = selectors.prompt_detail(user=request.user, prompt_id=prompt_id)
        if not selectors.may_edit(user=request.user, prompt=detail.prompt):
            raise PromptReadOnly("Only its owner can change this prompt.")
    except PromptError as error:
        return _not_found(error)
    prompt, latest = detail.prompt, detail.latest
    context: dict[str, Any] = {"prompt": prompt, "latest": latest}
    if request.method != "POST":
        context["form"] = PromptEditForm(
            initial={
                "name": prompt.name,
                "command": prompt.command,
                "description": prompt.description,
                "template": latest.template,
                "model_name": latest.model_name,
                "temperature": latest.temperature,
                "max_output_tokens": latest.max_output_tokens,
            }
        )
        return render(request, "prompts/form.html", context)
    form = context["form"] = PromptEditForm(request.POST)
    if not form.is_valid():
        context["error"] = form_message(form)
    else:
        data = form.cleaned_data
        try:
            version = services.prompt_edit(
                user=request.user,
                prompt_id=prompt.pk,
                name=data["name"],
                command=data["command"],
                description=data["description"],
                labels=(DEFAULT_LABEL,) if data["move_production"] else (),
                **form.version_data(),
            )
        except PromptError as refused:
            context["error"] = str(refused)
        else:
            messages.success(request, f"Saved as version {version.number}.")
            return _detail(prompt.pk)
    response = render(request, "prompts/form.html", context, status=400)
    return _refused(request, response, context["error"])


@login_required
@require_GET
def prompt_diff(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    """Two versions side by side (``?a=<number>&b=<number>``)."""
    form = DiffForm(request.GET)
    try:
        prompt = selectors.prompt_get(user=request.user, prompt_id=prompt_id)
        if not form.is_valid():
            raise PromptNotFound("Pick two versions to compare.")
        a = selectors.prompt_version_get(prompt=prompt, number=form.cleaned_data["a"])
        b = selectors.prompt_version_get(prompt=prompt, number=form.cleaned_data["b"])
    except PromptError as error:
        return _not_found(error)
    table = diff_table(
        a.template, b.template, before_title=f"v{a.number}", after_title=f"v{b.number}"
    )
    context = {"prompt": prompt, "a": a, "b": b, "table": table}
    template = "prompts/diff.html#diff" if request.htmx else "prompts/diff.html"
    return render(request, template, context)


def _owner_action(request: AuthenticatedHttpRequest, prompt_id: int, action: Any) -> HttpResponse:
    """Run ``action()`` (a service call) for a POST of the prompt's page; back to it."""
    try:
        note = action()
    except (PromptNotFound, PromptReadOnly) as error:
        return _not_found(error)
    except PromptError as error:
        messages.error(request, str(error))
        return _refused(request, _detail(prompt_id), str(error))
    if note:
        messages.success(request, note)
    return _detail(prompt_id)


@login_required
@require_POST
def prompt_label(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    form = LabelForm(request.POST)

    def move() -> str:
        if not form.is_valid():
            raise PromptError(form_message(form))
        data = form.cleaned_data
        services.prompt_label_move(
            user=request.user, prompt_id=prompt_id, label=data["label"], number=data["number"]
        )
        return f"{data['label'].strip().lower()} now points at version {data['number']}."

    return _owner_action(request, prompt_id, move)


@login_required
@require_POST
def prompt_restore(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    form = RestoreForm(request.POST)

    def restore() -> str:
        if not form.is_valid():
            raise PromptError(form_message(form))
        version = services.prompt_version_restore(
            user=request.user, prompt_id=prompt_id, number=form.cleaned_data["number"]
        )
        return f"Version {form.cleaned_data['number']} restored as version {version.number}."

    return _owner_action(request, prompt_id, restore)


@login_required
@require_POST
def prompt_share(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    form = ShareForm(request.POST, group_choices=_group_choices(request.user))

    def share() -> str:
        if not form.is_valid():
            raise PromptError(form_message(form))
        prompt = services.prompt_share(
            user=request.user,
            prompt_id=prompt_id,
            visibility=form.cleaned_data["visibility"],
            group_ids=form.cleaned_data["groups"],
        )
        return f"Sharing saved: {prompt.get_visibility_display().lower()}."

    return _owner_action(request, prompt_id, share)


@login_required
@require_POST
def prompt_delete(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    try:
        services.prompt_delete(user=request.user, prompt_id=prompt_id)
    except PromptError as error:
        return _not_found(error)
    messages.success(request, "Prompt deleted.")
    return redirect("prompts:list")


@login_required
@require_POST
def prompt_reformulation(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Reformulate my drafts with the prompt ``prompt_id`` (empty: the default)."""
    raw = request.POST.get("prompt_id", "")
    prompt_id = int(raw) if raw.isdigit() else None
    try:
        services.reformulation_prompt_set(user=request.user, prompt_id=prompt_id)
    except PromptError as error:
        return _not_found(error)
    messages.success(request, "Your drafts will be reformulated with this prompt.")
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = ""
    return redirect(back or "prompts:list")


@login_required
@require_GET
def prompt_export(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    """One prompt with all its versions and labels as a JSON file."""
    try:
        data = selectors.prompt_export(user=request.user, prompt_id=prompt_id)
    except PromptError as error:
        return _not_found(error)
    response = JsonResponse(data, json_dumps_params={"indent": 2, "ensure_ascii": False})
    response["Content-Disposition"] = f'attachment; filename="prompt-{data["command"]}.json"'
    return response


@login_required
def prompt_import(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Read an exported prompt (a file or pasted JSON) into the user's library."""
    if request.method != "POST":
        return render(request, "prompts/import.html", {"form": ImportForm()})
    form = ImportForm(request.POST, request.FILES)
    error = ""
    try:
        if not form.is_valid():
            raise PromptError(form_message(form))
        text = form.content()
        data = json_parse(text, max_chars=2_000_000)
        prompt, added = services.prompt_import(user=request.user, data=data)
    except (PromptError, InboundError) as refused:
        error = str(refused)
    except ValidationError as refused:  # the file: too large, not UTF-8
        error = " ".join(refused.messages)
    else:
        messages.success(request, f"Imported /{prompt.command}: {added} version(s) added.")
        return _detail(prompt.pk)
    response = render(request, "prompts/import.html", {"form": form, "error": error}, status=400)
    return _refused(request, response, error)


# -- the composer's "/" picker ------------------------------------------------------------


@login_required
@require_GET
def picker(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Message templates matching ``?q=`` (command or name), for the picker's list."""
    query = request.GET.get("q", "")[:60]
    items = selectors.prompt_picker(user=request.user, query=query)
    return render(request, "prompts/picker.html#picker-list", {"items": items, "query": query})


@login_required
@require_GET
def picker_fill(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    """The form for a template's variables (its ``production`` version, else the
    latest); a template with none is rendered at once."""
    try:
        prompt = selectors.prompt_get(user=request.user, prompt_id=prompt_id)
        version = selectors.prompt_version_resolve(prompt=prompt)
    except PromptError as error:
        return _not_found(error)
    if not version.variables:
        return _rendered(request, prompt, version.template, {})
    context = {"prompt": prompt, "fields": [(name, "") for name in version.variables]}
    return render(request, "prompts/picker.html#picker-fill", context)


@login_required
@require_POST
def picker_render(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    """The template rendered with the posted ``var_<name>`` values, for the composer
    (never sent from here); a missing variable is refused by name (400)."""
    try:
        prompt = selectors.prompt_get(user=request.user, prompt_id=prompt_id)
        version = selectors.prompt_version_resolve(prompt=prompt)
    except PromptError as error:
        return _not_found(error)
    values = {
        name: request.POST[f"var_{name}"].replace("\x00", "\ufffd")
        for name in version.variables
        if request.POST.get(f"var_{name}", "").strip()
    }
    return _rendered(request, prompt, version.template, values, version=version)


def _rendered(
    request: AuthenticatedHttpRequest,
    prompt: Prompt,
    template: str,
    values: dict[str, str],
    *,
    version: Any = None,
) -> HttpResponse:
    try:
        text = template_render(template, values, max_chars=settings.TOLLGATE_MAX_MESSAGE_CHARS)
    except PromptTemplateError as error:
        names = version.variables if version is not None else []
        fields = [(name, values.get(name, "")) for name in names]
        context = {"prompt": prompt, "fields": fields, "error": str(error)}
        response = render(request, "prompts/picker.html#picker-fill", context, status=400)
        return _refused(request, response, str(error))
    return render(request, "prompts/picker.html#picker-rendered", {"prompt": prompt, "text": text})


# -- chains -------------------------------------------------------------------------------


def _group_choices(user: Any) -> list[tuple[int, str]]:
    return [(g.pk, g.name) for g in groups_to_share_with(user=user)]


@login_required
@require_GET
def chain_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The chains the user may run: their own (to edit), then those shared with them."""
    query = request.GET.get("q", "")[:100]
    context = {"chains": selectors.chain_list(user=request.user, query=query), "query": query}
    return render(request, "prompts/chains.html", context)


def _step_forms(data: Any = None, chain: Chain | None = None) -> list[ChainStepForm]:
    """The step rows of the chain form: what was posted, else the chain's steps and
    one empty row (three for a new chain), at most ``MAX_CHAIN_STEPS``."""
    if data is not None:
        return [ChainStepForm(data, prefix=f"step-{n}") for n in range(MAX_CHAIN_STEPS)]
    steps = list(chain.steps.all()) if chain is not None else []
    rows = [
        ChainStepForm(prefix=f"step-{n}", initial={
            "name": s.name, "template": s.template, "model_name": s.model_name,
            "tools_allowed": s.tools_allowed, "judge_template": s.judge_template,
            "judge_model_name": s.judge_model_name, "max_rounds": s.max_rounds,
        })
        for n, s in enumerate(steps)
    ]  # fmt: skip
    blank = max(1, 3 - len(rows))
    rows += [ChainStepForm(prefix=f"step-{len(rows) + n}") for n in range(blank)]
    return rows[:MAX_CHAIN_STEPS]


def _steps_input(rows: list[ChainStepForm]) -> list[services.ChainStepInput]:
    """The typed steps (empty rows left out); ``PromptError`` naming the step."""
    steps = []
    for number, row in enumerate(rows, start=1):
        if row.empty:
            continue
        if not row.is_valid():
            raise PromptError(f"Step {number}: {form_message(row)}")
        data = row.cleaned_data
        steps.append(
            services.ChainStepInput(
                name=data["name"],
                template=data["template"],
                model_name=data["model_name"],
                tools_allowed=data["tools_allowed"],
                judge_template=data["judge_template"],
                judge_model_name=data["judge_model_name"],
                max_rounds=data["max_rounds"] or 1,
            )
        )
    return steps


@login_required
def chain_edit(request: AuthenticatedHttpRequest, chain_id: int | None = None) -> HttpResponse:
    """Create a chain (``chain_id`` ``None``) or edit one of the user's own. Another
    user's private chain answers 404; one shared with them, 403."""
    chain = None
    if chain_id is not None:
        try:
            chain = selectors.chain_get_own(user=request.user, chain_id=chain_id)
        except PromptError as error:
            return _not_found(error)
    choices = _group_choices(request.user)
    context: dict[str, Any] = {"chain": chain, "max_rounds": MAX_ROUNDS}
    if request.method != "POST":
        initial: dict[str, Any] = {"visibility": Prompt.Visibility.PRIVATE}
        if chain is not None:
            initial = {"name": chain.name, "description": chain.description,
                       "visibility": chain.visibility,
                       "groups": [g.pk for g in chain.groups.all()]}  # fmt: skip
        context |= {"form": ChainForm(initial=initial, group_choices=choices),
                    "steps": _step_forms(chain=chain)}  # fmt: skip
        return render(request, "prompts/chain_form.html", context)
    form = ChainForm(request.POST, group_choices=choices)
    rows = _step_forms(request.POST)
    try:
        if not form.is_valid():
            raise PromptError(form_message(form))
        saved = services.chain_save(
            user=request.user,
            chain_id=chain_id,
            name=form.cleaned_data["name"],
            description=form.cleaned_data["description"],
            visibility=form.cleaned_data["visibility"],
            group_ids=form.cleaned_data["groups"],
            steps=_steps_input(rows),
        )
    except PromptError as refused:
        message = str(refused)
    else:
        messages.success(request, f"Saved the chain “{saved.name}”.")
        return redirect("prompts:chains")
    # What was typed stays, with the reason; rows typed in are kept, empty ones trimmed.
    shown = [row for row in rows if not row.empty] or rows[:1]
    used = {row.prefix for row in shown}
    free = [n for n in range(MAX_CHAIN_STEPS) if f"step-{n}" not in used]
    if free:
        shown.append(ChainStepForm(prefix=f"step-{free[0]}"))
    context |= {"form": form, "steps": shown, "error": message}
    response = render(request, "prompts/chain_form.html", context, status=400)
    return _refused(request, response, message)


@login_required
@require_POST
def chain_delete(request: AuthenticatedHttpRequest, chain_id: int) -> HttpResponse:
    try:
        services.chain_delete(user=request.user, chain_id=chain_id)
    except PromptError as error:
        return _not_found(error)
    messages.success(request, "Chain deleted.")
    return redirect("prompts:chains")
