from rest_framework import serializers

from credits.models import LedgerEntry


class BalanceSerializer(serializers.Serializer):
    balance = serializers.IntegerField()


class LedgerEntrySerializer(serializers.ModelSerializer):
    job = serializers.UUIDField(source="job_id", allow_null=True)

    class Meta:
        model = LedgerEntry
        fields = ["id", "type", "amount", "balance_after", "reason", "job", "created_at"]
        read_only_fields = fields


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_staff = serializers.BooleanField()
    roles = serializers.ListField(child=serializers.CharField())
    scopes = serializers.ListField(child=serializers.CharField(), help_text="The key's scopes; a session has all.")
    mfa_enrolled = serializers.BooleanField()
    balance = serializers.IntegerField(help_text="Credits available.")
