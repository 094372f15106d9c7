package org.example.procfhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.jpa.api.dao.IFhirResourceDao;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.packages.IPackageInstallerSvc;
import ca.uhn.fhir.jpa.packages.ImplementationGuideInstallationException;
import ca.uhn.fhir.jpa.packages.PackageInstallOutcomeJson;
import ca.uhn.fhir.jpa.packages.PackageInstallationSpec;
import ca.uhn.fhir.jpa.searchparam.SearchParameterMap;
import ca.uhn.fhir.parser.DataFormatException;
import ca.uhn.fhir.rest.annotation.Operation;
import ca.uhn.fhir.rest.api.server.IBundleProvider;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.rest.param.UriParam;
import ca.uhn.fhir.rest.server.exceptions.BaseServerResponseException;
import ca.uhn.fhir.rest.server.exceptions.InvalidRequestException;
import ca.uhn.fhir.rest.server.exceptions.UnclassifiedServerFailureException;
import ca.uhn.fhir.rest.server.exceptions.UnprocessableEntityException;
import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.MetadataResource;
import org.hl7.fhir.r4.model.Parameters;
import org.hl7.fhir.r4.model.Resource;
import org.hl7.fhir.utilities.npm.NpmPackage;

/**
 * {@code POST [base]/$install-package}: installs a FHIR NPM package (.tgz) sent as the request
 * body (Content-Type {@code application/gzip}, {@code application/x-gzip},
 * {@code application/octet-stream} or {@code application/x-tar}).
 *
 * <ul>
 *   <li>Canonical resources (every resource of the type has a {@code url}: CodeSystem, ValueSet,
 *       StructureDefinition, ActivityDefinition, PlanDefinition, ...) go through HAPI's
 *       {@link IPackageInstallerSvc}: the package is stored in the server's package cache (used
 *       by validation), StructureDefinitions without a snapshot get one, resources keep the
 *       package's ids and are matched on {@code url} (an existing resource with the same url is
 *       updated). Dependencies are not fetched. Resources of any status are installed.</li>
 *   <li>All other resources (Patient, Procedure, Consent, ...) are written in one transaction,
 *       PUT to their own ids (atomic; references between them resolve inside the transaction).</li>
 *   <li>Re-sending the same name#version replaces the stored package with the new bytes.</li>
 * </ul>
 *
 * <p>The answer is a Parameters resource: {@code package} (name#version), then one
 * {@code resource} parameter per installed resource (parts {@code resourceType}, {@code id},
 * {@code url} for canonical ones, {@code versionId}, {@code route}), then the installer's
 * {@code message}s.
 */
public class InstallPackageProvider {

	private static final Set<String> ACCEPTED_CONTENT_TYPES = Set.of(
			"application/gzip", "application/x-gzip", "application/octet-stream", "application/x-tar",
			"application/tar+gzip");

	/** Installed first, in this order (HAPI's own order for conformance resources). */
	private static final List<String> FIRST_TYPES = List.of(
			"NamingSystem", "CodeSystem", "ValueSet", "StructureDefinition", "ConceptMap", "SearchParameter");

	private static final long MAX_BYTES = 200L * 1024 * 1024;

	private final FhirContext myFhirContext;
	private final IPackageInstallerSvc myPackageInstaller;
	private final DaoRegistry myDaoRegistry;
	private final IFhirSystemDao<?, ?> mySystemDao;

	public InstallPackageProvider(
			FhirContext theFhirContext,
			IPackageInstallerSvc thePackageInstaller,
			DaoRegistry theDaoRegistry,
			IFhirSystemDao<?, ?> theSystemDao) {
		myFhirContext = theFhirContext;
		myPackageInstaller = thePackageInstaller;
		myDaoRegistry = theDaoRegistry;
		mySystemDao = theSystemDao;
	}

	@Operation(name = "$install-package", manualRequest = true, idempotent = false)
	public Parameters installPackage(RequestDetails theRequest) {
		checkContentType(theRequest.getHeader("Content-Type"));
		byte[] bytes = theRequest.loadRequestContents();
		if (bytes == null || bytes.length == 0) {
			throw new InvalidRequestException("$install-package: the request body is empty; send the package "
					+ ".tgz bytes with Content-Type application/gzip");
		}
		if (bytes.length > MAX_BYTES) {
			throw new InvalidRequestException("$install-package: package larger than " + MAX_BYTES + " bytes");
		}

		NpmPackage npm = readPackage(bytes);
		String name = npm.name();
		String version = npm.version();
		if (name == null || name.isBlank() || version == null || version.isBlank()) {
			throw new InvalidRequestException(
					"$install-package: package/package.json must have a \"name\" and a \"version\"");
		}
		String fhirVersion = npm.fhirVersion();
		if (fhirVersion == null || !fhirVersion.startsWith("4.0")) {
			throw new UnprocessableEntityException("$install-package: package " + name + "#" + version
					+ " is for FHIR version " + fhirVersion + "; this server is FHIR R4 (4.0.1)");
		}

		Map<String, List<IBaseResource>> byType = parseResources(npm);
		List<String> installerTypes = new ArrayList<>();
		List<IBaseResource> transactionResources = new ArrayList<>();
		for (Map.Entry<String, List<IBaseResource>> entry : byType.entrySet()) {
			boolean allCanonical = entry.getValue().stream().allMatch(InstallPackageProvider::hasUrl);
			if (allCanonical) {
				installerTypes.add(entry.getKey());
			} else {
				transactionResources.addAll(entry.getValue());
			}
		}

		PackageInstallationSpec spec = new PackageInstallationSpec()
				.setName(name)
				.setVersion(version)
				.setPackageContents(bytes)
				.setFetchDependencies(false)
				.setVersionPolicy(PackageInstallationSpec.VersionPolicyEnum.SINGLE_VERSION);
		spec.setReloadExisting(true);
		if (installerTypes.isEmpty()) {
			spec.setInstallMode(PackageInstallationSpec.InstallModeEnum.STORE_ONLY);
		} else {
			spec.setInstallMode(PackageInstallationSpec.InstallModeEnum.STORE_AND_INSTALL);
			spec.setInstallResourceTypes(installerTypes);
		}

		Parameters result = new Parameters();
		result.addParameter().setName("package").setValue(new org.hl7.fhir.r4.model.StringType(name + "#" + version));
		// Resources without a url first: the package's ImplementationGuide (installed by the
		// installer) refers to its examples, which must exist when it is written.
		if (!transactionResources.isEmpty()) {
			writeInTransaction(result, transactionResources);
		}

		PackageInstallOutcomeJson outcome;
		try {
			// A stored package with the same name#version would be reused as is: replace it.
			myPackageInstaller.uninstall(spec);
			outcome = myPackageInstaller.install(spec);
		} catch (ImplementationGuideInstallationException e) {
			throw new UnprocessableEntityException("$install-package: " + describe(e));
		} catch (BaseServerResponseException e) {
			throw e;
		} catch (RuntimeException e) {
			throw new UnprocessableEntityException("$install-package: " + describe(e));
		}

		for (String type : installerTypes) {
			for (IBaseResource resource : byType.get(type)) {
				addInstalledCanonical(result, type, (Resource) resource);
			}
		}
		for (String message : outcome.getMessage()) {
			result.addParameter().setName("message").setValue(new org.hl7.fhir.r4.model.StringType(message));
		}
		return result;
	}

	private static void checkContentType(String theContentType) {
		String type = theContentType == null ? "" : theContentType.split(";")[0].trim().toLowerCase(Locale.ROOT);
		if (!ACCEPTED_CONTENT_TYPES.contains(type)) {
			throw new UnclassifiedServerFailureException(415, "$install-package: Content-Type must be "
					+ "application/gzip (or application/octet-stream) with the package .tgz as the body, not '"
					+ theContentType + "'");
		}
	}

	private static NpmPackage readPackage(byte[] theBytes) {
		NpmPackage npm;
		try {
			npm = NpmPackage.fromPackage(new ByteArrayInputStream(theBytes));
		} catch (Exception e) {
			throw new InvalidRequestException(
					"$install-package: the body is not a readable FHIR NPM package (.tgz): " + describe(e));
		}
		if (npm.getNpm() == null || !npm.getFolders().containsKey("package")) {
			throw new InvalidRequestException(
					"$install-package: the archive has no package/package.json (not a FHIR NPM package)");
		}
		return npm;
	}

	/** Resources of the package's "package" folder by type, in installation order. */
	/** Resources of the package's "package" folder and of its examples, by type, in installation order. */
	private Map<String, List<IBaseResource>> parseResources(NpmPackage theNpm) {
		Map<String, List<IBaseResource>> found = new LinkedHashMap<>();
		for (Map.Entry<String, NpmPackage.NpmPackageFolder> entry : theNpm.getFolders().entrySet()) {
			String folderName = entry.getKey();
			if (!folderName.equals("package") && !folderName.equals("example") && !folderName.equals("package/example")) {
				continue;
			}
			NpmPackage.NpmPackageFolder folder = entry.getValue();
			Map<String, List<String>> types;
			try {
				types = folder.getTypes();
			} catch (Exception e) {
				throw new InvalidRequestException("$install-package: cannot index the package: " + describe(e));
			}
			for (Map.Entry<String, List<String>> type : types.entrySet()) {
				if (myFhirContext.getResourceTypes().stream().noneMatch(type.getKey()::equals)) {
					throw new UnprocessableEntityException(
							"$install-package: resource type '" + type.getKey() + "' is not a FHIR R4 resource type");
				}
				List<IBaseResource> resources = found.computeIfAbsent(type.getKey(), k -> new ArrayList<>());
				for (String file : type.getValue()) {
					String where = folderName + "/" + file;
					try {
						byte[] content = folder.fetchFile(file);
						resources.add(myFhirContext.newJsonParser().parseResource(new String(content, StandardCharsets.UTF_8)));
					} catch (DataFormatException e) {
						throw new UnprocessableEntityException(
								"$install-package: " + where + " is not a valid FHIR R4 resource: " + e.getMessage());
					} catch (Exception e) {
						throw new InvalidRequestException("$install-package: cannot read " + where + ": " + describe(e));
					}
				}
			}
		}
		List<String> order = new ArrayList<>();
		for (String type : FIRST_TYPES) {
			if (found.containsKey(type)) {
				order.add(type);
			}
		}
		found.keySet().stream()
				.filter(t -> !FIRST_TYPES.contains(t) && !t.equals("ImplementationGuide"))
				.sorted()
				.forEach(order::add);
		// Last: an ImplementationGuide refers to the package's other resources.
		if (found.containsKey("ImplementationGuide")) {
			order.add("ImplementationGuide");
		}
		Map<String, List<IBaseResource>> result = new LinkedHashMap<>();
		for (String type : order) {
			result.put(type, found.get(type));
		}
		return result;
	}

	private static boolean hasUrl(IBaseResource theResource) {
		return theResource instanceof MetadataResource metadata && metadata.hasUrl();
	}

	@SuppressWarnings({"rawtypes", "unchecked"})
	private void addInstalledCanonical(Parameters theResult, String theType, Resource theResource) {
		String url = ((MetadataResource) theResource).getUrl();
		IFhirResourceDao dao = myDaoRegistry.getResourceDao(theType);
		SearchParameterMap map = SearchParameterMap.newSynchronous().add("url", new UriParam(url));
		IBundleProvider found = dao.search(map, new SystemRequestDetails());
		Parameters.ParametersParameterComponent param = theResult.addParameter().setName("resource");
		param.addPart().setName("resourceType").setValue(new org.hl7.fhir.r4.model.StringType(theType));
		param.addPart().setName("url").setValue(new org.hl7.fhir.r4.model.UriType(url));
		List<IBaseResource> stored = found.getResources(0, 1);
		if (stored.isEmpty()) {
			param.addPart().setName("status").setValue(new org.hl7.fhir.r4.model.CodeType("not-installed"));
			return;
		}
		IBaseResource first = stored.get(0);
		param.addPart().setName("id").setValue(new org.hl7.fhir.r4.model.StringType(first.getIdElement().getIdPart()));
		param.addPart().setName("versionId")
				.setValue(new org.hl7.fhir.r4.model.StringType(first.getIdElement().getVersionIdPart()));
		param.addPart().setName("route").setValue(new org.hl7.fhir.r4.model.CodeType("package-installer"));
	}

	@SuppressWarnings({"rawtypes", "unchecked"})
	private void writeInTransaction(Parameters theResult, List<IBaseResource> theResources) {
		Bundle bundle = new Bundle();
		bundle.setType(Bundle.BundleType.TRANSACTION);
		for (IBaseResource next : theResources) {
			Resource resource = (Resource) next;
			Bundle.BundleEntryComponent entry = bundle.addEntry().setResource(resource);
			String type = resource.fhirType();
			if (resource.hasIdElement() && resource.getIdElement().hasIdPart()) {
				String id = resource.getIdElement().getIdPart();
				entry.setFullUrl(type + "/" + id);
				entry.getRequest().setMethod(Bundle.HTTPVerb.PUT).setUrl(type + "/" + id);
			} else {
				entry.getRequest().setMethod(Bundle.HTTPVerb.POST).setUrl(type);
			}
		}
		Bundle response = (Bundle) ((IFhirSystemDao) mySystemDao).transaction(new SystemRequestDetails(), bundle);
		for (int i = 0; i < response.getEntry().size(); i++) {
			String location = response.getEntry().get(i).getResponse().getLocation();
			Parameters.ParametersParameterComponent param = theResult.addParameter().setName("resource");
			Resource sent = (Resource) theResources.get(i);
			param.addPart().setName("resourceType").setValue(new org.hl7.fhir.r4.model.StringType(sent.fhirType()));
			org.hl7.fhir.r4.model.IdType id = new org.hl7.fhir.r4.model.IdType(location);
			param.addPart().setName("id").setValue(new org.hl7.fhir.r4.model.StringType(id.getIdPart()));
			param.addPart().setName("versionId").setValue(new org.hl7.fhir.r4.model.StringType(id.getVersionIdPart()));
			param.addPart().setName("route").setValue(new org.hl7.fhir.r4.model.CodeType("transaction"));
		}
	}

	private static String describe(Throwable theError) {
		StringBuilder text = new StringBuilder();
		Throwable next = theError;
		int depth = 0;
		while (next != null && depth < 5) {
			String message = next.getMessage();
			if (message != null && !text.toString().contains(message)) {
				if (!text.isEmpty()) {
					text.append(": ");
				}
				text.append(message);
			}
			next = next.getCause() == next ? null : next.getCause();
			depth++;
		}
		return text.isEmpty() ? theError.getClass().getSimpleName() : text.toString();
	}
}
