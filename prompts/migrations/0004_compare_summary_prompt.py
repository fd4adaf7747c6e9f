"""Create the deployment's /compare-summary instruction: the system prompt the
summary of a Compare exchange (several models answering one message) is written
with (``TOLLGATE_COMPARE_SUMMARY_PROMPT``; shared with everyone, owned by no one;
administrators edit it in admin, as new versions)."""

from django.db import migrations

INSTRUCTION = (
    "Several models answered the same question; their answers follow it, each under "
    "the name of the model that wrote it. Write one summary for the user: what the "
    "answers agree on, where they differ and which answer is best supported. Name the "
    "models when you compare them. Add nothing that none of the answers says. A model "
    "whose answer failed is named as such; do not guess what it would have said."
)


def create_compare_summary(apps, schema_editor):
    Prompt = apps.get_model("prompts", "Prompt")
    PromptVersion = apps.get_model("prompts", "PromptVersion")
    PromptLabel = apps.get_model("prompts", "PromptLabel")
    if Prompt.objects.filter(owner__isnull=True, command="compare-summary").exists():
        return
    prompt = Prompt.objects.create(
        name="Summarise compared answers",
        command="compare-summary",
        description="The instruction the summary of a Compare exchange is written with.",
        kind="system",
        owner=None,
        visibility="everyone",
    )
    version = PromptVersion.objects.create(
        prompt=prompt, number=1, template=INSTRUCTION, variables=[], change_note="First version"
    )
    PromptLabel.objects.create(prompt=prompt, name="production", version=version)


def remove_compare_summary(apps, schema_editor):
    Prompt = apps.get_model("prompts", "Prompt")
    Prompt.objects.filter(owner__isnull=True, command="compare-summary").delete()


class Migration(migrations.Migration):
    dependencies = [("prompts", "0003_evaluations")]

    operations = [migrations.RunPython(create_compare_summary, remove_compare_summary)]
