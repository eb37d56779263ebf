"""Database helpers that keep memory and transactions bounded however large a table grows, and hot statements cheap."""

import functools
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from django.db import connection, migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import ProjectState
from django.db.models import Model, Q, QuerySet
from django.db.models.fields import AutoFieldMixin, Field
from django.db.models.fields.reverse_related import ForeignObjectRel
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from django.db.backends.postgresql.schema import DatabaseSchemaEditor as PostgresSchemaEditor


def keyset_batches(queryset: QuerySet[Any], *, field: str, size: int) -> Iterator[list[Any]]:
    """Yield the queryset's rows in (field, pk) order, `size` at a time, each batch its own short query.

    Keyset pagination: every query starts where the last one ended on an index, so neither a cursor nor
    a transaction stays open between batches, and rows deleted by the caller are never walked again.
    """
    ordered = queryset.order_by(field, "pk")
    last: tuple[Any, Any] | None = None
    while True:
        page = ordered
        if last is not None:
            page = ordered.filter(Q(**{f"{field}__gt": last[0]}) | Q(**{field: last[0], "pk__gt": last[1]}))
        batch = list(page[:size])
        if not batch:
            return
        yield batch
        tail = batch[-1]
        last = (tail[field], tail["pk"]) if isinstance(tail, dict) else (getattr(tail, field), tail.pk)
        if len(batch) < size:
            return


class AddIndexWithoutLock(migrations.AddIndex):
    """CREATE INDEX CONCURRENTLY on PostgreSQL (writes go on while it builds); a plain CREATE INDEX elsewhere.

    Django's AddIndexConcurrently refuses other databases, and SQLite (tests, local runs) has no concurrent
    build, so one operation picks by vendor. The migration using it must set `atomic = False`.
    """

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        model: type[Model] = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            cast("PostgresSchemaEditor", schema_editor).add_index(model, self.index, concurrently=True)
        else:
            schema_editor.add_index(model, self.index)

    def database_backwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        model: type[Model] = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            cast("PostgresSchemaEditor", schema_editor).remove_index(model, self.index, concurrently=True)
        else:
            schema_editor.remove_index(model, self.index)


def quoted_column(field: "Field[Any, Any] | ForeignObjectRel | None") -> str:
    """A concrete field's column, quoted (the stubs also allow None and reverse relations, which have none)."""
    column = getattr(field, "column", None)
    if not isinstance(column, str):
        raise ValueError(f"{field!r} has no column")
    return connection.ops.quote_name(column)


# The statements of the hot paths are written once per shape and vendor: Model.save() and QuerySet.update() build
# and compile theirs on every call (0.2-0.4 ms of CPU each, more than the round trip), and no library caches them.


@functools.cache
def insert_into(model: type[Model], vendor: str) -> tuple[str, list["Field[Any, Any]"]]:
    """`INSERT INTO table (columns)` of every concrete field but an auto key, and those fields (their values:
    insert_values). The caller adds the rows (VALUES, or a SELECT) and any clause after them."""
    fields = [field for field in model._meta.concrete_fields if not isinstance(field, AutoFieldMixin)]
    return _into(model, fields), fields


def _into(model: type[Model], fields: Sequence["Field[Any, Any]"]) -> str:
    columns = ", ".join(quoted_column(field) for field in fields)
    return f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns})"


@functools.cache
def _insert_statement(
    model: type[Model], unique_fields: tuple[str, ...] | None, vendor: str
) -> tuple[str, list["Field[Any, Any]"]]:
    """`INSERT ... [ON CONFLICT (unique_fields) DO NOTHING] RETURNING pk` of every concrete field but an auto key."""
    meta = model._meta
    into, fields = insert_into(model, vendor)
    sql = f"{into} VALUES ({', '.join(['%s'] * len(fields))})"
    if unique_fields is not None:
        sql += f" ON CONFLICT ({', '.join(quoted_column(meta.get_field(name)) for name in unique_fields)}) DO NOTHING"
    return f"{sql} RETURNING {quoted_column(meta.pk)}", fields


def insert_values(instance: Model, fields: Sequence["Field[Any, Any]"]) -> list[Any]:
    """The instance's values of these fields as an INSERT writes them (pre_save, then prepared for the database)."""
    return [field.get_db_prep_save(field.pre_save(instance, add=True), connection) for field in fields]


def insert_row(instance: Model) -> tuple[str, str, list[Any]]:
    """`INSERT INTO table (columns)` of the instance's fields whose values are not NULL, the row's expressions (for
    `VALUES (row)` or `SELECT row`) and their parameters (as insert_values prepares them).

    A column left out is NULL (no model here has a database default); an empty, zero or false value is written as
    a literal. The shorter parameter list keeps a statement of many parts under psycopg's 50, above which it parses
    the statement on every call (the job's INSERT alone has 28 values, 14 of them empty or false as a rule)."""
    _, fields = insert_into(type(instance), connection.vendor)
    values = insert_values(instance, fields)
    kept = tuple(index for index, value in enumerate(values) if value is not None)
    literals = [_literal(values[index]) for index in kept]
    row = ", ".join("%s" if literal is None else literal for literal in literals)
    params = [values[index] for index, literal in zip(kept, literals, strict=True) if literal is None]
    return _insert_into_some(type(instance), kept, connection.vendor), row, params


def _literal(value: Any) -> str | None:
    """The SQL of an empty, zero or false value; None for any other (it stays a parameter)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not value:
        return "''"
    if isinstance(value, int) and not value:
        return "0"
    if isinstance(value, Jsonb) and value.obj in ([], {}):
        return f"'{json.dumps(value.obj)}'::jsonb"
    return None


@functools.cache
def _insert_into_some(model: type[Model], kept: tuple[int, ...], vendor: str) -> str:
    _, fields = insert_into(model, vendor)
    return _into(model, [fields[index] for index in kept])


def _insert(instance: Model, unique_fields: tuple[str, ...] | None) -> bool:
    sql, fields = _insert_statement(type(instance), unique_fields, connection.vendor)
    values = insert_values(instance, fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    if row is None:
        return False
    if isinstance(instance._meta.pk, AutoFieldMixin):
        instance.pk = row[0]
    instance._state.adding, instance._state.db = False, connection.alias
    return True


def insert_new(instance: Model) -> None:
    """One `INSERT` of a new instance, as save(force_insert=True) but without its per-call query building (and
    without the save signals: use it only for models nothing listens to)."""
    _insert(instance, None)


def insert_unless_conflict(instance: Model, *, unique_fields: Sequence[str]) -> bool:
    """One `INSERT ... ON CONFLICT (unique_fields) DO NOTHING` of a new instance: whether it was written.

    Unlike create() in a savepoint, a conflict costs no extra round trips and leaves the transaction usable
    (PostgreSQL, SQLite >= 3.24). An auto primary key is set on the instance from RETURNING.
    """
    return _insert(instance, tuple(unique_fields))


@functools.cache
def _update_statement(
    model: type[Model], assigned: tuple[str, ...], matched: tuple[str, ...], vendor: str
) -> tuple[str, list["Field[Any, Any]"], list["Field[Any, Any]"]]:
    meta = model._meta
    set_fields = [cast("Field[Any, Any]", meta.get_field(name)) for name in assigned]
    where_fields = [cast("Field[Any, Any]", meta.get_field(name)) for name in matched]
    assignments = ", ".join(f"{quoted_column(field)} = %s" for field in set_fields)
    conditions = " AND ".join(f"{quoted_column(field)} = %s" for field in where_fields)
    return (
        f"UPDATE {connection.ops.quote_name(meta.db_table)} SET {assignments} WHERE {conditions}",
        set_fields,
        where_fields,
    )


def update_where(model: type[Model], *, where: dict[str, Any], values: dict[str, Any]) -> int:
    """`filter(**where).update(**values)` for equalities on concrete fields (names or attnames), its statement
    written once per shape: the rows updated. A None in `where` is refused (SQL's `= NULL` matches nothing)."""
    sql, params = update_where_statement(model, where=where, values=values)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def update_where_statement(
    model: type[Model], *, where: dict[str, Any], values: dict[str, Any]
) -> tuple[str, list[Any]]:
    """update_where's statement and parameters, for a caller that adds a condition (` AND ...`) or runs it in a CTE."""
    if not where or any(value is None for value in where.values()):
        raise ValueError(f"update_where needs non-null conditions: {where!r}")
    sql, set_fields, where_fields = _update_statement(model, tuple(values), tuple(where), connection.vendor)
    params = [
        field.get_db_prep_save(value, connection) for field, value in zip(set_fields, values.values(), strict=True)
    ]
    params += [
        field.get_db_prep_value(value, connection) for field, value in zip(where_fields, where.values(), strict=True)
    ]
    return sql, params


def update_then(update: tuple[str, list[Any]], followers: Sequence[tuple[str, list[Any]]]) -> int:
    """PostgreSQL: an UPDATE (update_where_statement's) and statements that run only if it wrote, as one statement
    (data-modifying CTEs): the rows the UPDATE wrote. Each follower's SQL ends in a WHERE clause the conditions are
    added to.

    The followers run in the order given (each reads the one before it, which PostgreSQL then runs first; left alone
    it runs unreferenced CTEs in an order of its own), so their row locks are taken in that order: a statement that
    takes the same rows in the same order elsewhere (an acceptance: a slot, then an Idempotency-Key's record) waits
    for this one instead of deadlocking with it."""
    sql, params = update
    parts, params = [f"written AS ({sql} RETURNING 1)"], list(params)
    for n, (follower_sql, follower_params) in enumerate(followers):
        after = f" AND (SELECT count(*) FROM then_{n - 1}) >= 0" if n else ""
        parts.append(f"then_{n} AS ({follower_sql} AND EXISTS (SELECT FROM written){after} RETURNING 1)")
        params += follower_params
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(parts)} SELECT count(*) FROM written", params)
        (rows,) = cursor.fetchone()
    return int(rows)


INSERT_MANY_ROWS = 500
"""Rows per multi-row INSERT of insert_many_unless_conflict: well under SQLite's 32766 bound parameters."""


def insert_many_unless_conflict(instances: Sequence[Model], *, unique_field: str) -> set[Any]:
    """Multi-row `INSERT ... ON CONFLICT (unique_field) DO NOTHING RETURNING unique_field` of new instances
    (no auto primary key): the unique values written, so the caller knows which rows a conflict skipped.

    One round trip per INSERT_MANY_ROWS rows, where bulk_create(ignore_conflicts=True) cannot tell what it wrote.
    """
    if not instances:
        return set()
    into, fields = insert_into(type(instances[0]), connection.vendor)
    unique = instances[0]._meta.get_field(unique_field)
    row = f"({', '.join(['%s'] * len(fields))})"
    written: set[Any] = set()
    for start in range(0, len(instances), INSERT_MANY_ROWS):
        chunk = instances[start : start + INSERT_MANY_ROWS]
        values = [value for item in chunk for value in insert_values(item, fields)]
        sql = (
            f"{into} VALUES {', '.join([row] * len(chunk))}"
            f" ON CONFLICT ({quoted_column(unique)}) DO NOTHING RETURNING {quoted_column(unique)}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            written.update(value for (value,) in cursor.fetchall())
    return written
