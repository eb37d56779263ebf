from rest_framework import serializers


class TotpEnrolmentSerializer(serializers.Serializer):
    provisioning_uri = serializers.CharField()
    qr_png = serializers.CharField(help_text="Base64 PNG of the provisioning URI as a QR code.")


class TotpConfirmSerializer(serializers.Serializer):
    code = serializers.RegexField(r"^\d{6,8}$", max_length=8)


class MfaStatusSerializer(serializers.Serializer):
    mfa_enrolled = serializers.BooleanField()


class TokenSerializer(serializers.Serializer):
    access = serializers.CharField()
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="Seconds; the token dies sooner if its API key is revoked.")
    scopes = serializers.ListField(child=serializers.CharField())
