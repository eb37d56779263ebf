"""The API's operations as (METHOD, path with anonymous parameters): from the schema, comparable with the docs."""

import re

from drf_spectacular.generators import SchemaGenerator

PATH_PARAMETER = re.compile(r"\{[^}]+\}")


def operation(method: str, path: str) -> tuple[str, str]:
    """Parameter names differ between prose ({id}) and code ({job_id}); only their places count."""
    return method.upper(), PATH_PARAMETER.sub("{}", path)


def schema_operations() -> set[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {operation(method, path) for path, operations in schema["paths"].items() for method in operations}
