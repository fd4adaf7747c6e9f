"""Create the built-in offline demo model, free and the default when no other is."""

from decimal import Decimal

from django.db import migrations


def create_demo(apps, schema_editor):
    ModelConfig = apps.get_model("conversations", "ModelConfig")
    has_default = ModelConfig.objects.filter(is_default=True).exists()
    ModelConfig.objects.get_or_create(
        name="Demo (offline)",
        defaults={
            "litellm_model": "demo/tollgate",
            "context_window": 8192,
            "max_output_tokens": 1024,
            # Explicit zero prices: budgets know the demo is free.
            "input_cost_per_token": Decimal(0),
            "output_cost_per_token": Decimal(0),
            "supports_tools": True,
            "enabled": True,
            "is_default": not has_default,
        },
    )


def remove_demo(apps, schema_editor):
    ModelConfig = apps.get_model("conversations", "ModelConfig")
    ModelConfig.objects.filter(name="Demo (offline)", litellm_model="demo/tollgate").delete()


class Migration(migrations.Migration):
    dependencies = [("conversations", "0002_message_run_step")]

    operations = [migrations.RunPython(create_demo, remove_demo)]
