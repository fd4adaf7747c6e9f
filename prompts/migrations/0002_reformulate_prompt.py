"""Create the deployment's /reformulate instruction: the prompt the Reformulate
button rewrites drafts with, unless a user picks one of theirs (shared with
everyone, owned by no one; administrators edit it in admin, as new versions)."""

from django.db import migrations

INSTRUCTION = (
    "Rewrite the user's draft message so that a language model understands it best: "
    "clear, specific and well organised. Keep its meaning, its language and every fact, "
    "name and number in it; add nothing it does not ask. Answer with the rewritten "
    "message only, with no preamble and no quotes."
)


def create_reformulate(apps, schema_editor):
    Prompt = apps.get_model("prompts", "Prompt")
    PromptVersion = apps.get_model("prompts", "PromptVersion")
    PromptLabel = apps.get_model("prompts", "PromptLabel")
    if Prompt.objects.filter(owner__isnull=True, command="reformulate").exists():
        return
    prompt = Prompt.objects.create(
        name="Reformulate a draft",
        command="reformulate",
        description="The instruction the Reformulate button rewrites drafts with.",
        kind="system",
        owner=None,
        visibility="everyone",
    )
    version = PromptVersion.objects.create(
        prompt=prompt, number=1, template=INSTRUCTION, variables=[], change_note="First version"
    )
    PromptLabel.objects.create(prompt=prompt, name="production", version=version)


def remove_reformulate(apps, schema_editor):
    Prompt = apps.get_model("prompts", "Prompt")
    Prompt.objects.filter(owner__isnull=True, command="reformulate").delete()


class Migration(migrations.Migration):
    dependencies = [("prompts", "0001_initial")]

    operations = [migrations.RunPython(create_reformulate, remove_reformulate)]
