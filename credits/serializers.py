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
