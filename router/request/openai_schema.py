"""The parts of the OpenAI chat-completions request that carry structure: messages and their
content parts, tools and tool calls, ``tool_choice``, ``response_format``.

They are checked here rather than by the upstream because an upstream that meets input it does
not understand may answer with a 5xx — which the proxy would count against that expert's
breaker, taking it away from every other client. What passes is forwarded as the client sent it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- content parts ---------------------------------------------------------------------------------
class TextPart(_Strict):
    type: Literal["text"]
    text: str


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


class ImageUrl(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(_Strict):
    data: str = Field(min_length=1)
    format: Literal["wav", "mp3"]


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Strict):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Strict):
    type: Literal["file"]
    file: FileRef


ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")]


# -- tools -----------------------------------------------------------------------------------------
class FunctionDef(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class CustomDef(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(_Strict):
    type: Literal["custom"]
    custom: CustomDef


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class FunctionName(_Strict):
    name: str


class NamedFunctionChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class NamedCustomChoice(_Strict):
    type: Literal["custom"]
    custom: FunctionName


class AllowedTools(_Strict):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(min_length=1)


class AllowedToolsChoice(_Strict):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = (Literal["none", "auto", "required"]
              | Annotated[NamedFunctionChoice | NamedCustomChoice | AllowedToolsChoice, Field(discriminator="type")])


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str = Field(min_length=1)
    type: Literal["function"]
    function: FunctionCall


# -- response format -------------------------------------------------------------------------------
class JsonSchemaSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


# -- messages --------------------------------------------------------------------------------------
class ChatMessage(_Strict):
    """One message; which fields and parts a role may carry is checked after the fields."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None
    # what clients echo back from an earlier answer
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _fits_its_role(self) -> ChatMessage:
        role, parts = self.role, self.content if isinstance(self.content, list) else []
        kinds = {p.type for p in parts}
        allowed = {"user": {"text", "image_url", "input_audio", "file"}, "assistant": {"text", "refusal"}}.get(role, {"text"})
        if kinds - allowed:
            raise ValueError(f"a {role} message cannot carry {sorted(kinds - allowed)} parts (allowed: {sorted(allowed)})")
        if role != "assistant" and (self.tool_calls is not None or self.function_call is not None or self.refusal is not None):
            raise ValueError(f"only assistant messages carry tool_calls, function_call or refusal, not {role} messages")
        if role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if role == "function" and not self.name:
            raise ValueError("a function message needs the function's name")
        if role == "assistant":
            if self.content is None and not self.tool_calls and self.function_call is None and self.audio is None:
                raise ValueError("an assistant message needs content, tool_calls or function_call")
        elif self.content is None and role != "function":
            raise ValueError(f"a {role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content if isinstance(p, TextPart))
        return ""

    def has_attachments(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart | AudioPart | FilePart) for p in self.content)


def check_tool_choice(tool_choice: Any, tools: list[Any] | None) -> None:
    """``tool_choice`` must refer to tools the request declares (OpenAI answers 400 otherwise)."""
    if tool_choice is None or tool_choice == "none":
        return
    if not tools:
        raise ValueError("tool_choice needs 'tools' to choose from")
    if isinstance(tool_choice, NamedFunctionChoice | NamedCustomChoice):
        declared = {t.function.name if isinstance(t, FunctionTool) else t.custom.name for t in tools}
        name = tool_choice.function.name if isinstance(tool_choice, NamedFunctionChoice) else tool_choice.custom.name
        if name not in declared:
            raise ValueError(f"tool_choice names {name!r}, which is not among the declared tools {sorted(declared)}")
