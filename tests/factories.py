"""factory_boy factories shared by the suite."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from accounts.models import User
from approvals.canonical import arguments_hash

DEFAULT_PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    name = factory.Faker("name")
    password = factory.PostGenerationMethodCall("set_password", DEFAULT_PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class ModelConfigFactory(factory.django.DjangoModelFactory):
    """The offline demo model, free (``django_get_or_create`` on its name: a data
    migration may have made the row already)."""

    class Meta:
        model = "conversations.ModelConfig"
        django_get_or_create = ("name",)

    name = "Demo (offline)"
    litellm_model = "demo/tollgate"
    input_cost_per_token = Decimal(0)
    output_cost_per_token = Decimal(0)


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "conversations.Conversation"

    owner = factory.SubFactory(UserFactory)
    model_config = factory.SubFactory(ModelConfigFactory)
    title = "Test chat"


class MessageFactory(factory.django.DjangoModelFactory):
    """A user's message, by default; pass ``role``/``run``/``run_step`` for others."""

    class Meta:
        model = "conversations.Message"

    conversation = factory.SubFactory(ConversationFactory)
    role = "user"
    content = factory.Sequence(lambda n: f"message {n}")


class RunFactory(factory.django.DjangoModelFactory):
    """A run answering a new user message; ``status`` and the rest as given (tests
    put runs in any state directly; the code moves them only through
    ``conversations.runs.run_transition``)."""

    class Meta:
        model = "conversations.Run"

    conversation = factory.SubFactory(ConversationFactory)
    user_message = factory.SubFactory(
        MessageFactory, conversation=factory.SelfAttribute("..conversation")
    )


class ToolInvocationFactory(factory.django.DjangoModelFactory):
    """A tool call of a run, awaiting approval by default; pass ``run`` and
    ``message`` (rows, or ``message=None``) to place it: the model keeps only
    their ids (``run_id``, ``message_id``)."""

    class Meta:
        model = "tools.ToolInvocation"

    class Params:
        run = factory.SubFactory(RunFactory)
        message = None

    run_id = factory.SelfAttribute("run.pk")
    message_id = factory.LazyAttribute(lambda o: o.message.pk if o.message else None)
    user = factory.SelfAttribute("run.conversation.owner")
    conversation_id = factory.SelfAttribute("run.conversation_id")
    tool_call_id = factory.Sequence(lambda n: f"call_{n}")
    tool_name = "notes.write"
    arguments_requested = factory.LazyFunction(lambda: {"key": "todo", "value": "buy milk"})
    status = "awaiting_approval"


class GroupFactory(factory.django.DjangoModelFactory):
    """A group (approvers, usually); add members with ``user.groups.add(group)``."""

    class Meta:
        model = "auth.Group"
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Group {n}")


class ApprovalPolicyFactory(factory.django.DjangoModelFactory):
    """A rule for everyone unless ``user``/``group`` is given."""

    class Meta:
        model = "approvals.ApprovalPolicy"

    tool_pattern = "notes.*"
    action = "ask"


class GuardrailFactory(factory.django.DjangoModelFactory):
    """A guardrail for everyone unless ``user``/``group`` is given: by default a PII
    redaction of the user's input."""

    class Meta:
        model = "approvals.Guardrail"

    name = factory.Sequence(lambda n: f"Guardrail {n}")
    stage = "user_input"
    kind = "pii"
    action = "redact"
    config = factory.LazyFunction(dict)
    description = "Personal data is not sent to the model."


class ApprovalRequestFactory(factory.django.DjangoModelFactory):
    """A pending request for ``invocation`` (its run, conversation and requester),
    bound to its arguments' hash, expiring in half an hour."""

    class Meta:
        model = "approvals.ApprovalRequest"

    invocation = factory.SubFactory(ToolInvocationFactory)
    requester = factory.SelfAttribute("invocation.user")
    conversation_id = factory.SelfAttribute("invocation.conversation_id")
    run_id = factory.SelfAttribute("invocation.run_id")
    tool_name = factory.SelfAttribute("invocation.tool_name")
    arguments = factory.SelfAttribute("invocation.arguments_requested")
    arguments_hash = factory.LazyAttribute(lambda o: arguments_hash(o.arguments))
    hints = factory.LazyFunction(lambda: {"read_only": False, "destructive": False})
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=30))


class BudgetFactory(factory.django.DjangoModelFactory):
    """A monthly budget for ``user`` (or ``group``; neither: everyone's default)."""

    class Meta:
        model = "accounts.Budget"

    period = "monthly"
    cost_limit_usd = Decimal("10")


class PromptFactory(factory.django.DjangoModelFactory):
    """A private message template of a new user, with version 1 (``template=``, a
    Jinja text) labelled ``production``; pass ``kind="system"``, ``visibility`` and
    so on. Rows straight from the models: the services are what the tests test."""

    class Meta:
        model = "prompts.Prompt"
        skip_postgeneration_save = True

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Prompt {n}")
    command = factory.Sequence(lambda n: f"prompt-{n}")
    kind = "template"
    visibility = "private"

    @factory.post_generation
    def template(obj, create, extracted, **kwargs):
        if not create:
            return
        from prompts.models import PromptLabel, PromptVersion
        from prompts.templating import template_check

        text = extracted or "Summarise this for {{ audience }}:"
        version = PromptVersion.objects.create(
            prompt=obj, number=1, template=text, variables=template_check(text), author=obj.owner
        )
        PromptLabel.objects.create(prompt=obj, name="production", version=version)


class EvaluationFactory(factory.django.DjangoModelFactory):
    """A not-started A/B evaluation of a new prompt's version 1 on two models named
    ``model_a``/``model_b`` (ModelConfig names; none made here)."""

    class Meta:
        model = "prompts.Evaluation"

    prompt = factory.SubFactory(PromptFactory)
    owner = factory.LazyAttribute(lambda o: o.prompt.owner)
    version_a = factory.LazyAttribute(lambda o: o.prompt.versions.get(number=1))
    version_b = factory.LazyAttribute(lambda o: o.prompt.versions.get(number=1))
    model_a = "Demo A"
    model_b = "Demo B"


class EvaluationRowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "prompts.EvaluationRow"

    evaluation = factory.SubFactory(EvaluationFactory)
    position = factory.Sequence(lambda n: n + 1)
    values = factory.LazyFunction(lambda: {"audience": "children"})


class EvaluationOutputFactory(factory.django.DjangoModelFactory):
    """A finished output of ``row`` for ``variant`` ("a" by default)."""

    class Meta:
        model = "prompts.EvaluationOutput"

    row = factory.SubFactory(EvaluationRowFactory)
    evaluation = factory.LazyAttribute(lambda o: o.row.evaluation)
    variant = "a"
    status = "done"
    text = "An answer."
    prompt_tokens = 10
    completion_tokens = 5
    cost_usd = Decimal("0.001")
    latency_ms = 100


class ChainFactory(factory.django.DjangoModelFactory):
    """A private chain of a new user; pass ``steps=[{"template": …}, …]`` (each a
    ``ChainStep``'s fields; ``name`` defaults to "Step N"). Rows straight from the
    models: the services are what the tests test."""

    class Meta:
        model = "prompts.Chain"
        skip_postgeneration_save = True

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Chain {n}")
    visibility = "private"

    @factory.post_generation
    def steps(obj, create, extracted, **kwargs):
        if not create:
            return
        from prompts.models import ChainStep

        for position, fields in enumerate(extracted or [{"template": "{{ input }}"}]):
            ChainStep.objects.create(
                chain=obj, position=position, **{"name": f"Step {position + 1}", **fields}
            )


class AgentProfileFactory(factory.django.DjangoModelFactory):
    """A private agent of a new user with text instructions and no tools, no model of
    its own (the conversation's); pass ``handoff_targets=[...]`` to let it hand off,
    ``agent_tools=[...]`` to let it call agents as tools."""

    class Meta:
        model = "conversations.AgentProfile"
        skip_postgeneration_save = True

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Agent {n}")
    instructions = factory.LazyAttribute(lambda agent: f"You are {agent.name}.")
    visibility = "private"

    @factory.post_generation
    def handoff_targets(obj, create, extracted, **kwargs):
        if create and extracted:
            obj.handoff_targets.set(extracted)

    @factory.post_generation
    def agent_tools(obj, create, extracted, **kwargs):
        if create and extracted:
            obj.agent_tools.set(extracted)


class CollectionFactory(factory.django.DjangoModelFactory):
    """A knowledge collection; share it with ``collection.groups.add(group)``."""

    class Meta:
        model = "knowledge.Collection"

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Collection {n}")
