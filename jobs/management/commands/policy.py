"""`manage.py policy list|show|set|export|import`: the scriptable face of the policy admin, same form."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django import forms
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models, transaction

from accounts.forms import EndpointPolicyForm
from accounts.models import EndpointPolicy, Role, split_list
from accounts.policies import ENDPOINT_DEFAULTS
from jobs.forms import KindSettingsForm
from jobs.kind_settings import kind_defaults
from jobs.kinds import KINDS
from jobs.models import KindSettings

KIND_PREFIX = "kind."
"""Kind settings are named `kind.<kind>` next to the endpoint names."""

TRUE_WORDS, FALSE_WORDS = ("true", "1"), ("false", "0")

LIST_FIELDS = 6
"""Fields `policy list` shows per row; `policy show NAME` shows them all."""


@dataclass
class Target:
    """One named policy: its row (unsaved if only the defaults exist) and the form that validates it."""

    name: str
    instance: models.Model
    form_class: type[forms.ModelForm]
    key_field: str

    @property
    def fields(self) -> list[str]:
        return [field for field in self.form_class.base_fields if field != self.key_field]

    def values(self) -> dict[str, Any]:
        return {field: getattr(self.instance, field) for field in self.fields}

    def form(self, changes: dict[str, Any]) -> forms.ModelForm:
        unknown = sorted(set(changes) - set(self.fields))
        if unknown:
            raise CommandError(f"{self.name}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(self.fields)}")
        data = {**self.values(), self.key_field: getattr(self.instance, self.key_field)}
        for field, value in changes.items():
            data[field] = _parse(self, field, value)
        return self.form_class(data=data, instance=self.instance)


def _parse(target: Target, field: str, value: Any) -> Any:
    """Booleans strictly (a form checkbox would read any non-empty string as on); the form checks the rest."""
    if not isinstance(target.form_class.base_fields[field], forms.BooleanField) or isinstance(value, bool):
        return "" if value is None else value
    if str(value).lower() in TRUE_WORDS:
        return True
    if str(value).lower() in FALSE_WORDS:
        return False
    raise CommandError(f"{target.name}: {field} must be true or false, not {value!r}")


def policy_names() -> list[str]:
    return [*ENDPOINT_DEFAULTS, *(KIND_PREFIX + kind for kind in KINDS)]


def get_target(name: str) -> Target:
    if name in ENDPOINT_DEFAULTS:
        row = EndpointPolicy.objects.filter(name=name).first() or EndpointPolicy(name=name, **ENDPOINT_DEFAULTS[name])
        return Target(name, row, EndpointPolicyForm, "name")
    kind = name.removeprefix(KIND_PREFIX)
    if name.startswith(KIND_PREFIX) and kind in KINDS:
        kind_row = KindSettings.objects.filter(kind=kind).first() or KindSettings(kind=kind, **kind_defaults(kind))
        return Target(name, kind_row, KindSettingsForm, "kind")
    raise CommandError(f"unknown policy {name!r}; names: {', '.join(policy_names())}")


def _errors(target: Target, form: forms.ModelForm) -> str:
    return "; ".join(
        f"{target.name}: {field}: {' '.join(str(message) for message in messages)}"
        for field, messages in form.errors.items()
    )


def _validated(changes_by_name: dict[str, dict[str, Any]]) -> list[forms.ModelForm]:
    """Every change validated before any is saved: one invalid value changes nothing."""
    valid, errors = [], []
    for name, changes in changes_by_name.items():
        target = get_target(name)
        form = target.form(changes)
        if form.is_valid():
            valid.append(form)
        else:
            errors.append(_errors(target, form))
    if errors:
        raise CommandError("nothing changed: " + "; ".join(errors))
    return valid


def _save(valid: list[forms.ModelForm]) -> None:
    with transaction.atomic():
        for form in valid:
            form.save()


class Command(BaseCommand):
    help = "List, show, set, export and import endpoint policies and kind settings (validated like the admin)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every policy name with its main fields")
        sub.add_parser("show", help="one policy as JSON").add_argument("name")
        setter = sub.add_parser("set", help="change fields: policy set NAME field=value ...")
        setter.add_argument("name")
        setter.add_argument("assignments", nargs="+", metavar="field=value")
        sub.add_parser("export", help="every policy as JSON on stdout")
        sub.add_parser("import", help="apply a JSON file as written by export").add_argument("file")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        getattr(self, f"do_{action}")(**options)

    def do_list(self, **options: Any) -> None:
        for name in policy_names():
            values = get_target(name).values()
            summary = " ".join(f"{field}={_text(value)}" for field, value in list(values.items())[:LIST_FIELDS])
            self.stdout.write(f"{name:<14} {summary}")

    def do_show(self, *, name: str, **options: Any) -> None:
        self.stdout.write(json.dumps(get_target(name).values(), indent=2))

    def do_set(self, *, name: str, assignments: list[str], **options: Any) -> None:
        changes = {}
        for assignment in assignments:
            field, equals, value = assignment.partition("=")
            if not equals or not field:
                raise CommandError(f"expected field=value, got {assignment!r}")
            changes[field.strip()] = value
        _save(_validated({name: changes}))
        self.stdout.write(f"{name} updated")

    def do_export(self, **options: Any) -> None:
        self.stdout.write(json.dumps({name: get_target(name).values() for name in policy_names()}, indent=2))

    def do_import(self, *, file: str, **options: Any) -> None:
        try:
            document = json.loads(Path(file).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {file}: {exc}") from None
        if not isinstance(document, dict) or not all(isinstance(fields, dict) for fields in document.values()):
            raise CommandError('expected a JSON object {"<policy name>": {"<field>": value, ...}, ...}')
        with transaction.atomic():  # a file that fails validation leaves no role behind either
            _create_named_roles(document)
            _save(_validated(document))
        self.stdout.write(f"imported {len(document)} policies")


def _create_named_roles(document: dict[str, dict[str, Any]]) -> None:
    """Config as code: the roles an imported policy names exist afterwards, as on the system it came from."""
    for fields in document.values():
        if isinstance(fields.get("roles"), str):
            for name in split_list(fields["roles"]):
                Role.objects.get_or_create(name=name)


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)
